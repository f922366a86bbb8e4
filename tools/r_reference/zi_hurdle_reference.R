## Reference fits for the zero-inflated and hurdle count GLMMs (tests/test_glmm_zeroinfl.py).
##
## glmmTMB's Salamanders (the data of glmm_optimum_reference.R, tests/data/salamanders.csv),
## the classic count ~ mined + (1 | site), ziformula = ~ mined models of Brooks et al. (2017):
## zero-inflated Poisson and NB2 (family = poisson / nbinom2) and the hurdle models
## (family = truncated_poisson / truncated_nbinom2), plus an intercept-only zero-inflation
## (zi = ~ 1) for the ZIP.  glmmTMB fits every fixed parameter (conditional and zi coefficients,
## log theta, log SD) on its Laplace marginal likelihood with the exact (observed) Hessian in u.
##
## Standard errors: sqrt(diag(vcov(fit, full = TRUE))) -- the inverse Hessian of glmmTMB's
## objective in all fixed parameters (sdreport), which for log-link counts agrees with tighter
## differences to ~1e-6 (see gamma_reference.R).  The RE SD is exp(theta) of the fit.
##
## Also simulated counts (tests/data/zisim.csv) with an exposure offset and a continuous
## zero-inflation covariate, for a zero-inflated Poisson and a hurdle NB2.
##
## Run from the repository root: Rscript tools/r_reference/zi_hurdle_reference.R  (~10 s)
source("tools/r_reference/common.R")
suppressPackageStartupMessages(library(glmmTMB))
REF_DIR <- "tests/reference/zi"
start_script("zi_hurdle_reference.R", c(REF_DIR))
R_VERSIONS <- r_versions(c("glmmTMB", "TMB", "Matrix", "jsonlite"))
read_data("salamanders")

## glmmTMB's default nlminb control: rel.tol = 1e-14 ends in "singular convergence (7)" here
TMB_CTRL <- glmmTMBControl()

zi_case <- function(name, formula, zi, family, modes = FALSE, data = "salamanders") {
  call_txt <- sprintf("glmmTMB(%s, ziformula = %s, data = %s, family = %s)",
                      formula, zi, data, family)
  t0 <- proc.time()[["elapsed"]]
  fit <- glmmTMB(as.formula(formula), ziformula = as.formula(zi), data = get(data),
                 family = family, control = TMB_CTRL)
  secs <- proc.time()[["elapsed"]] - t0
  stopifnot(fit$fit$convergence == 0, fit$sdr$pdHess)
  V <- vcov(fit)
  fe <- fixef(fit)
  out <- list(name = name, r_call = call_txt, data = paste0(data, ".csv"), formula = formula,
              ziformula = zi, family = family, r_seconds = round(secs, 3),
              fixef = as.list(fe$cond), se = as.list(sqrt(diag(V$cond))),
              fixef_zi = as.list(fe$zi), se_zi = as.list(sqrt(diag(V$zi))),
              re_sd = unname(attr(VarCorr(fit)$cond[[1]], "stddev")),
              varcorr = lapply(VarCorr(fit)$cond, function(v)
                list(sd = unname(attr(v, "stddev")),
                     cor = if (ncol(v) > 1) attr(v, "correlation")[2, 1] else NULL)),
              loglik = as.numeric(logLik(fit)), df = attr(logLik(fit), "df"),
              aic = AIC(fit), bic = BIC(fit), nobs = nobs(fit),
              max_grad = max(abs(fit$sdr$gradient.fixed)),
              theta = if (grepl("nbinom2", family)) sigma(fit) else NULL)
  if (modes) {
    re <- ranef(fit)$cond[[1]]                 # the first grouping factor's intercepts
    out$ranef <- list(levels = rownames(re), values = re[["(Intercept)"]])
    ## the three predict types of glmmTMB at the fitted rows (with the random effects) and the
  ## Pearson residuals (y - E[y]) / sqrt(Var[y]) of the full model
    out$predict <- list(conditional = predict(fit, type = "conditional"),
                        zprob = predict(fit, type = "zprob"),
                        response = predict(fit, type = "response"))
    out$resid_pearson <- unname(residuals(fit, type = "pearson"))
  }
  write_ref(out, name, REF_DIR, R_VERSIONS)
  invisible(fit)
}

zi_case("zip_mined", "count ~ mined + (1 | site)", "~ mined", "poisson", modes = TRUE)
zi_case("zip_int", "count ~ mined + (1 | site)", "~ 1", "poisson")
zi_case("zinb_mined", "count ~ mined + (1 | site)", "~ mined", "nbinom2", modes = TRUE)
zi_case("hurdle_pois_mined", "count ~ mined + (1 | site)", "~ mined", "truncated_poisson",
        modes = TRUE)
zi_case("hurdle_nb_mined", "count ~ mined + (1 | site)", "~ mined", "truncated_nbinom2",
        modes = TRUE)

## ---- simulated counts with an exposure offset and a continuous zero-inflation covariate
## ---- (40 groups, 1200 rows): ZIP and hurdle NB2
set.seed(20261206)
n <- 1200; G <- 40
g <- sample(G, n, replace = TRUE)
x <- rnd(rnorm(n)); z <- rnd(rnorm(n)); t <- rnd(runif(n, 0.5, 2))
b <- rnorm(G, 0, 0.6)
mu <- exp(0.5 + 0.4 * x + b[g] + log(t))
pz <- plogis(-0.5 + 1.0 * z)
y <- ifelse(runif(n) < pz, 0, rnbinom(n, size = 3, mu = mu))
zisim <- save_data(data.frame(g = factor(sprintf("g%02d", g)), x = x, z = z, t = t, y = y),
                   "zisim")
zi_case("zisim_zip_offset", "y ~ x + offset(log(t)) + (1 | g)", "~ z", "poisson",
        data = "zisim")
zi_case("zisim_hurdle_nb", "y ~ x + offset(log(t)) + (1 | g)", "~ z", "truncated_nbinom2",
        data = "zisim")

## ---- other random-effects structures (the dense path of the conditional modes): crossed
## ---- site and species intercepts (ZIP), a correlated random slope (ZINB2, hurdle Poisson)
zi_case("zip_crossed", "count ~ mined + (1 | site) + (1 | spp)", "~ mined", "poisson",
        modes = TRUE)
## counts with correlated random intercepts and slopes (SDs 0.5 and 0.3, correlation 0.4)
set.seed(20261207)
n <- 1200; G <- 30
g <- sample(G, n, replace = TRUE)
x <- rnd(rnorm(n)); z <- rnd(rnorm(n))
L <- t(chol(matrix(c(0.25, 0.06, 0.06, 0.09), 2)))
bb <- t(L %*% matrix(rnorm(2 * G), 2))
mu <- exp(0.6 + 0.4 * x + bb[g, 1] + bb[g, 2] * x)
pz <- plogis(-0.7 + 0.8 * z)
zislope <- save_data(data.frame(g = factor(sprintf("g%02d", g)), x = x, z = z,
                                y = ifelse(runif(n) < pz, 0, rnbinom(n, size = 2, mu = mu)),
                                yp = ifelse(runif(n) < pz, 0, rpois(n, mu))), "zislope")
zi_case("zislope_zinb", "y ~ x + (x | g)", "~ z", "nbinom2", data = "zislope")
zi_case("zislope_hurdle_pois", "yp ~ x + (x | g)", "~ z", "truncated_poisson",
        data = "zislope")
