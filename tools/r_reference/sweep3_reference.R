## Reference values for tests/test_option_sweep3.py (options no other test passed).
##   Rscript tools/r_reference/sweep3_reference.R      (from the repository root)
## Writes tests/reference/sweep3/sweep3.json.  Data: the bundled wine (mlmext/datasets/data),
## epil and dietox as tests/test_gee.py reads them (tests/data).
suppressPackageStartupMessages({ library(ordinal); library(geepack); library(jsonlite) })
source("tools/r_reference/common.R")
start_script("sweep3_reference.R", "tests/reference/sweep3")
read_data("wine", "mlmext/datasets/data")
out <- list()

## clmm: anova of three nested fits (ordinal's LR tests)
m0 <- clmm(rating ~ temp + (1 | judge), data = wine)
m1 <- clmm(rating ~ temp + contact + (1 | judge), data = wine)
m2 <- clmm(rating ~ temp * contact + (1 | judge), data = wine)
a <- anova(m0, m1, m2)
out$clmm_anova <- list(npar = a$no.par, AIC = a$AIC, logLik = a$logLik, LR = a$LR.stat,
                       df = a$df, p = a[["Pr(>Chisq)"]])
## clmm: link and threshold options together, and AGQ with symmetric thresholds
fit_ref <- function(f) list(loglik = as.numeric(logLik(f)), coef = as.list(coef(f)),
                            sd = attr(VarCorr(f)$judge, "stddev")[[1]])
out$probit_equidistant <- fit_ref(clmm(rating ~ temp + contact + (1 | judge), data = wine,
                                       link = "probit", threshold = "equidistant"))
out$symmetric_agq7 <- fit_ref(clmm(rating ~ temp + contact + (1 | judge), data = wine,
                                   threshold = "symmetric", nAGQ = 7))

## geepack: prior weights with the Poisson and Gamma families (the weighted cases of
## gee_reference.R are binomial); tight control as there.  QuasiLik_pan: Pan's quasi-likelihood
## with the prior weights; CIC: geepack's, Omega_I scaled by its independence fit's scale.
read_data("epil", "tests/data"); read_data("dietox", "tests/data")
CONTROL <- geese.control(epsilon = 1e-10, maxit = 200)
pan_quasi <- function(fit) { y <- fit$y; mu <- fitted(fit); w <- fit$prior.weights
  switch(family(fit)$family, poisson = sum(w * (y * log(mu) - mu)), Gamma = sum(w * (-y / mu - log(mu)))) }
gee_one <- function(fml, data, id, fam, w, cs) {
  data$w <- w; data$idv <- data[[id]]
  f <- do.call(geeglm, list(formula = fml, id = quote(idv), data = data, family = fam,
                            weights = quote(w), corstr = cs, control = CONTROL))
  g <- f$geese
  list(coef = as.list(coef(f)), robust_se = sqrt(diag(g$vbeta)),
       alpha = if (length(g$alpha)) unname(g$alpha) else NULL, scale = unname(g$gamma),
       QuasiLik_pan = pan_quasi(f), CIC = unname(QIC(f)["CIC"]), converged = g$error == 0)
}
for (cs in c("independence", "exchangeable", "ar1")) {
  out$gee_epil_weighted[[cs]] <- gee_one(y ~ lbase * trt + lage + V4, epil, "subject", poisson,
                                         1 + (epil$trt == "progabide"), cs)
  out$gee_dietox_gamma_weighted[[cs]] <- gee_one(Feed ~ Time + Cu, dietox, "Pig", Gamma(link = "log"),
                                                 dietox$Start / 20, cs)
}
write_ref(out, "sweep3", "tests/reference/sweep3", r_versions(c("ordinal", "geepack")))
