## Reference fits for the Gamma and inverse Gaussian GLMMs (tests/test_glmm_gamma.py).
##
## Gamma: glmmTMB (exact Laplace, dispersion estimated with the other parameters), with lme4's
## glmer beside it for comparison (lme4's Laplace for families with a scale is not the
## likelihood's: its penalized deviance leaves the dispersion out).  glmmTMB has no inverse
## Gaussian family, so for it the reference is an independent maximization of the exact
## marginal likelihood of a (1 | subject) model (one-dimensional integrals by integrate(),
## optim), which AGQ with many nodes must reproduce; lme4's glmer(inverse.gaussian) is stored
## for comparison.
##
## Run from the repository root: Rscript tools/r_reference/gamma_reference.R  (~1 min)
source("tools/r_reference/common.R")
suppressPackageStartupMessages({library(lme4); library(glmmTMB)})
REF_DIR <- "tests/reference/gamma"
start_script("gamma_reference.R", c(REF_DIR, DATA_DIR))
R_VERSIONS <- r_versions(c("lme4", "glmmTMB", "TMB", "Matrix", "jsonlite"))

## ---- data: reaction-time style, 36 subjects x 24 items (crossed), a condition and a
## ---- continuous predictor; RTs from a Gamma (log link) and from an inverse Gaussian
set.seed(20261206)
ns <- 36; ni <- 24
d <- expand.grid(item = seq_len(ni), subject = seq_len(ns))
d$cond <- factor(ifelse(d$item %% 2 == 0, "incongruent", "congruent"))
d$x <- rnd(rnorm(nrow(d)))
b0 <- rnorm(ns, 0, 0.25); b1 <- rnorm(ns, 0, 0.08); c0 <- rnorm(ni, 0, 0.12)
eta <- log(600) + 0.12 * (d$cond == "incongruent") + 0.05 * d$x + b0[d$subject] +
  b1[d$subject] * d$x + c0[d$item]
mu <- exp(eta)
shape <- 8
d$rt <- rnd(rgamma(nrow(d), shape = shape, rate = shape / mu))
## inverse Gaussian with log link, lambda = 1 / phi, phi = 2e-4 (CV^2 = phi mu ~ 0.12)
rig <- function(n, m, lambda) {               # Michael, Schucany and Haas (1976)
  nu <- rnorm(n)^2
  x <- m + m^2 * nu / (2 * lambda) - m / (2 * lambda) * sqrt(4 * m * lambda * nu + m^2 * nu^2)
  ifelse(runif(n) <= m / (m + x), x, m^2 / x)
}
d$rt_ig <- rnd(rig(nrow(d), exp(log(600) + 0.12 * (d$cond == "incongruent") + b0[d$subject]),
                   1 / 2e-4))
d$subject <- factor(sprintf("s%02d", d$subject))
d$item <- factor(sprintf("i%02d", d$item))
d <- d[, c("subject", "item", "cond", "x", "rt", "rt_ig")]
gammart <- save_data(d, "gammart")

## ---- writers --------------------------------------------------------------------------------
tmb_varcorr <- function(fit) {
  vc <- VarCorr(fit)$cond
  rows <- list()
  for (g in names(vc)) {
    sds <- attr(vc[[g]], "stddev"); cr <- attr(vc[[g]], "correlation")
    for (k in seq_along(sds))
      rows[[length(rows) + 1]] <- list(grp = g, var1 = names(sds)[k], var2 = "",
                                       vcov = unname(sds[k])^2, sdcor = unname(sds[k]))
    if (length(sds) > 1) for (j in 1:(length(sds) - 1)) for (i in (j + 1):length(sds))
      rows[[length(rows) + 1]] <- list(grp = g, var1 = names(sds)[j], var2 = names(sds)[i],
                                       vcov = vc[[g]][i, j], sdcor = cr[i, j])
  }
  rows
}

lme4_part <- function(call_txt) {
  res <- run_call(call_txt)
  fit <- res$fit
  c(list(r_call = call_txt, r_seconds = res$seconds, warnings = I(res$warnings)),
    lme4_estimates(fit), list(sigma = sigma(fit)))
}

## Standard errors from the Hessian of glmmTMB's own objective by central differences of its
## exact (AD) gradient with small steps.  vcov() (sdreport) uses optimHess's default steps of
## 1e-3, too large for coefficients on the inverse link's scale (~1/600): its SEs there are
## 0.5 % and 4.6 % off; for the log link both agree to ~1e-6.  Stored as "se"; vcov()'s as "se_vcov".
tight_se <- function(fit) {
  env <- fit$obj$env
  p <- env$last.par.best[-env$random]
  H <- optimHess(p, fit$obj$fn, fit$obj$gr, control = list(ndeps = rep(1e-7, length(p))))
  sqrt(diag(solve(H)))[seq_along(fixef(fit)$cond)]
}

TMB_CTRL <- "glmmTMBControl(optCtrl = list(iter.max = 1e4, eval.max = 1e4, rel.tol = 1e-14))"

gamma_case <- function(name, formula, link = "log", r_formula = formula, note = NULL) {
  fam <- sprintf("Gamma(link = \"%s\")", link)
  call_txt <- sprintf("glmmTMB::glmmTMB(%s, data = gammart, family = %s, control = %s)",
                      r_formula, fam, TMB_CTRL)
  res <- run_call(call_txt)
  fit <- res$fit
  ## the time of a default fit (the benchmark)
  dflt_txt <- sprintf("glmmTMB::glmmTMB(%s, data = gammart, family = %s)", r_formula, fam)
  tm <- median(replicate(3, system.time(eval(parse(text = dflt_txt)))[["elapsed"]]))
  fe <- fixef(fit)$cond
  out <- list(
    name = name, r_call = call_txt, data = "gammart.csv", formula = formula,
    family = "Gamma", link = link, r_seconds = tm, r_versions = R_VERSIONS,
    ## glmmTMB repeats some warnings hundreds of times (NaN evaluations of the inverse link
    ## outside its range during the line searches): each distinct one once, with its count
    warnings = I(unique(res$warnings)), warning_counts = I(as.integer(table(res$warnings)[unique(res$warnings)])),
    messages = I(res$messages), notes = I(as.character(note)),
    optimizer_message = fit$fit$message,
    fixef = as.list(fe),
    se = as.list(setNames(tight_se(fit), names(fe))),
    se_vcov = as.list(setNames(sqrt(diag(vcov(fit)$cond)), names(fe))),
    varcorr = tmb_varcorr(fit),
    ## glmmTMB's sigma() for the Gamma is 1 / sqrt(shape): the dispersion phi is its square
    scale = sigma(fit)^2,
    loglik = as.numeric(logLik(fit)), nobs = nobs(fit),
    convergence = fit$fit$convergence,
    lme4 = lme4_part(sprintf("lme4::glmer(%s, data = gammart, family = %s, control = %s)",
                             r_formula, fam, "glmerControl(tolPwrss = 1e-12)"))
  )
  write_ref(out, name, REF_DIR)
  cat(sprintf("%-18s %-45s glmmTMB logLik=%.6f  lme4 logLik=%.6f\n", name, formula,
              out$loglik, out$lme4$loglik))
}

gamma_case("gamma_subject", "rt ~ cond + (1 | subject)")
gamma_case("gamma_crossed", "rt ~ cond + x + (1 | subject) + (1 | item)")
gamma_case("gamma_slope", "rt ~ cond + x + (x | subject)")
gamma_case("gamma_inverse", "rt ~ cond + (1 | subject)", link = "inverse",
           note = "Gamma's canonical (inverse) link: observed and expected information agree")

## ---- inverse Gaussian: the exact marginal likelihood of rt_ig ~ cond + (1 | subject), log link
ig_exact <- function() {
  X <- model.matrix(~ cond, gammart); y <- gammart$rt_ig
  grp <- split(seq_len(nrow(gammart)), gammart$subject)
  ldig <- function(y, m, phi) -(y - m)^2 / (2 * phi * y * m^2) - 0.5 * log(2 * pi * phi * y^3)
  loglik <- function(par) {                 # par = (beta, log sd, log phi)
    beta <- par[1:2]; s <- exp(par[3]); phi <- exp(par[4])
    eta <- drop(X %*% beta)
    tot <- 0
    for (g in grp) {
      lf <- function(b) vapply(b, function(bb) sum(ldig(y[g], exp(eta[g] + bb), phi)), 0) +
        dnorm(b, 0, s, log = TRUE)
      md <- optimize(lf, c(-3, 3), maximum = TRUE, tol = 1e-12)
      top <- md$objective; at <- md$maximum
      h <- 1e-4
      curv <- -(lf(at + h) - 2 * top + lf(at - h)) / h^2
      w <- 12 / sqrt(max(curv, 1e-8))
      v <- integrate(function(b) exp(lf(b) - top), at - w, at + w, rel.tol = 1e-12,
                     abs.tol = 0, subdivisions = 1000L)$value
      tot <- tot + top + log(v)
    }
    tot
  }
  start <- c(log(600), 0.1, log(0.25), log(2e-4))
  o <- optim(start, function(p) -loglik(p), method = "BFGS",
             control = list(reltol = 1e-15, maxit = 1000, parscale = c(0.01, 0.01, 0.05, 0.02)))
  o <- optim(o$par, function(p) -loglik(p), method = "Nelder-Mead",
             control = list(reltol = 1e-15, maxit = 4000))
  o <- optim(o$par, function(p) -loglik(p), method = "BFGS",
             control = list(reltol = 1e-15, maxit = 1000, parscale = c(0.01, 0.01, 0.05, 0.02)))
  H <- optimHess(o$par, function(p) -loglik(p), control = list(ndeps = rep(1e-4, 4)))
  V <- solve(H)
  list(par = o$par, loglik = -o$value, se = sqrt(diag(V))[1:2], convergence = o$convergence)
}
t0 <- proc.time()[["elapsed"]]
ig <- ig_exact()
ig_sec <- proc.time()[["elapsed"]] - t0
out <- list(
  name = "ig_subject", r_call = "ig_exact() in tools/r_reference/gamma_reference.R",
  data = "gammart.csv", formula = "rt_ig ~ cond + (1 | subject)", family = "inverse.gaussian",
  link = "log", r_seconds = ig_sec, r_versions = R_VERSIONS,
  notes = I(c("exact marginal likelihood (integrate() per subject, rel.tol 1e-12) maximized by optim",
              "se: fixed-effects block of the inverse of optimHess (central differences, ndeps 1e-4)")),
  fixef = as.list(setNames(ig$par[1:2], c("(Intercept)", "condincongruent"))),
  se = as.list(setNames(ig$se, c("(Intercept)", "condincongruent"))),
  varcorr = list(list(grp = "subject", var1 = "(Intercept)", var2 = "", vcov = exp(2 * ig$par[3]),
                      sdcor = exp(ig$par[3]))),
  scale = exp(ig$par[4]), loglik = ig$loglik, convergence = ig$convergence,
  lme4 = lme4_part(paste0("lme4::glmer(rt_ig ~ cond + (1 | subject), data = gammart, family = ",
                          "inverse.gaussian(link = \"log\"), control = glmerControl(tolPwrss = 1e-12))"))
)
write_ref(out, "ig_subject", REF_DIR)
cat(sprintf("%-18s %-45s exact logLik=%.6f  lme4 logLik=%.6f\n", "ig_subject", out$formula,
            out$loglik, out$lme4$loglik))
