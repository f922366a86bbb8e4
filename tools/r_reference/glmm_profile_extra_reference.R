## Reference profile-likelihood intervals of GLMMs with a family parameter and of zero-inflated /
## hurdle models (tests/test_glmm_profile_extra.py): glmmTMB's confint(fit, method = "profile")
## and confint(fit, method = "uniroot").
##
## glmmTMB profiles on its internal scale -- theta = log SD, betad = its log dispersion
## parameter -- with every other parameter (the dispersion among them) re-optimized at each
## profile point.  An interval
## of a monotone function of a parameter is the function of its interval, so mlmext's intervals
## (SD, the dispersion on its own scale) are compared after transforming these endpoints:
##   Gamma   betad = log shape, sigma() = 1 / sqrt(shape)   mlmext's scale = 1 / shape = exp(-betad)
##   nbinom1 sigma() = phi (Var = mu (1 + phi))   phi = exp(betad)
##   beta    sigma() = phi (the precision)        phi = exp(betad)
##   nbinom2 betad = log theta (size), sigma() = theta   alpha = 1 / theta = exp(-betad), reversed
## Both of glmmTMB's interval methods are stored: "profile" (tmbprofile: a grid of profile points
## and a spline through them, what confint() gives) and "uniroot" (TMB's tmbroot: a root of the
## profile itself, with uniroot's default tol of 1.2e-4 on the parameter and nlminb's default
## rel.tol 1e-10 inside), and "tight": the same root with uniroot(tol = 1e-10) and
## nlminb(rel.tol = 1e-14) over the other parameters of glmmTMB's objective (tight_root below),
## the quantity mlmext computes; the tests compare with it closely, with the others loosely.
##
## Cases (data written by other scripts, read back): gamma_subject (gammart), nb1_mined,
## zip_int, hurdle_pois, nb2_mined, hurdle_nb and zinb_mined (salamanders), beta_g (betaprop).  nb2_mined is
## mlmext's glmer_nb(..., information="observed") profiled with nb_alpha="free".  glmmTMB has no inverse Gaussian
## family: no case here.
##
## Run from the repository root: Rscript tools/r_reference/glmm_profile_extra_reference.R (~2 min)
source("tools/r_reference/common.R")
suppressPackageStartupMessages(library(glmmTMB))
REF_DIR <- "tests/reference/profile_extra"
start_script("glmm_profile_extra_reference.R", c(REF_DIR))
R_VERSIONS <- r_versions(c("glmmTMB", "TMB", "Matrix", "jsonlite"))
read_data("salamanders"); read_data("gammart"); read_data("betaprop")

TMB_CTRL <- "glmmTMBControl(optCtrl = list(iter.max = 1e4, eval.max = 1e4, rel.tol = 1e-14))"

## what each internal parameter is: the family's dispersion, an RE log SD, a (zi) coefficient
kinds_of <- function(fit) {
  ee <- fit$obj$env
  nm <- names(ee$last.par.best)
  nm <- nm[!nm %in% c("b", "bzi")]
  c(beta = "beta", betazi = "zi", betad = "betad", theta = "log_sd")[nm]
}

## The root of the profile where the deviance is qchisq(level, 1) above its minimum, on each side
## of parameter i (internal scale): the other parameters by nlminb (rel.tol 1e-14, from the
## previous point and from the estimates, the better kept) on glmmTMB's objective, the root by
## uniroot(tol = 1e-10) in [estimate -+ 7 SE].
tight_root <- function(fit, i, level = 0.95) {
  obj <- fit$obj
  par0 <- obj$env$last.par.best[-obj$env$random]
  sd0 <- sqrt(diag(vcov(fit, full = TRUE)))[i]
  ctrl <- list(rel.tol = 1e-14, eval.max = 1e4, iter.max = 1e4)
  start <- par0[-i]
  prof <- function(x) {
    put <- function(q) { p <- par0; p[i] <- x; p[-i] <- q; p }
    best <- NULL
    for (s in list(start, par0[-i])) {
      a <- nlminb(s, function(q) obj$fn(put(q)), function(q) obj$gr(put(q))[-i], control = ctrl)
      if (is.null(best) || a$objective < best$objective) best <- a
    }
    start <<- best$par
    best$objective
  }
  v0 <- prof(par0[[i]])
  target <- 0.5 * qchisq(level, 1)
  side <- function(d) {
    start <<- par0[-i]
    far <- par0[[i]] + d * 7 * sd0
    if (!(prof(far) - v0 - target > 0)) return(NA_real_)   # no end within 7 SE (as glmmTMB: NA)
    start <<- par0[-i]
    uniroot(function(x) prof(x) - v0 - target, sort(c(par0[[i]], far)), tol = 1e-10)$root
  }
  c(side(-1), side(1))
}

## Rscript glmm_profile_extra_reference.R NAME ...: only those cases (all by default)
ONLY <- commandArgs(trailingOnly = TRUE)

case <- function(name, formula, data, family, zi = NULL, note = NULL) {
  if (length(ONLY) && !name %in% ONLY) return(invisible(NULL))
  call_txt <- sprintf("glmmTMB::glmmTMB(%s, %sdata = %s, family = %s, control = %s)", formula,
                      if (is.null(zi)) "" else sprintf("ziformula = %s, ", zi), data, family,
                      TMB_CTRL)
  res <- run_call(call_txt)
  fit <- res$fit
  ## nlminb with rel.tol = 1e-14 may end in "false convergence" (8) at the optimum: checked by
  ## the gradient instead
  stopifnot(max(abs(fit$sdr$gradient.fixed)) < 1e-3)
  kinds <- kinds_of(fit)
  full <- rownames(vcov(fit, full = TRUE))
  est <- fit$obj$env$last.par.best[-fit$obj$env$random]
  ## one parameter at a time: glmmTMB's spline fails (an error) where a profile has NA points
  errors <- character(0)
  ci_of <- function(method) t(vapply(seq_along(kinds), function(i) tryCatch(
    unname(confint(fit, method = method, full = TRUE, parm = i, estimate = FALSE)[1, 1:2]),
    error = function(e) {
      errors <<- c(errors, sprintf("%s, %s: %s", method, full[i], conditionMessage(e)))
      c(NA_real_, NA_real_)
    }), numeric(2)))
  t_prof <- system.time(ci_prof <- ci_of("profile"))[["elapsed"]]
  t_root <- system.time(ci_root <- ci_of("uniroot"))[["elapsed"]]
  tight <- lapply(seq_along(kinds), function(i) tight_root(fit, i))
  fe <- fixef(fit)
  out <- list(
    name = name, r_call = call_txt, formula = formula, ziformula = zi, family = family,
    data = paste0(data, ".csv"), notes = I(as.character(note)),
    warnings = I(unique(res$warnings)), glmmTMB_errors = I(errors), r_fit_seconds = res$seconds,
    r_profile_seconds = t_prof, r_uniroot_seconds = t_root,
    optimizer_message = fit$fit$message, max_grad = max(abs(fit$sdr$gradient.fixed)),
    loglik = as.numeric(logLik(fit)), fixef = as.list(fe$cond),
    fixef_zi = if (length(fe$zi)) as.list(fe$zi) else NULL,
    re_sd = unname(attr(VarCorr(fit)$cond[[1]], "stddev")),
    sigma = if ("betad" %in% kinds) sigma(fit) else NULL,
    se_internal = as.list(setNames(sqrt(diag(vcov(fit, full = TRUE))), full)),
    ## one entry per internal parameter (glmmTMB's order): name, kind, estimate, intervals
    params = lapply(seq_along(kinds), function(i)
      list(name = full[i], kind = unname(kinds[i]), estimate = unname(est[i]),
           profile = unname(ci_prof[i, 1:2]), uniroot = unname(ci_root[i, 1:2]),
           tight = tight[[i]])))
  write_ref(out, name, REF_DIR, R_VERSIONS)
  cat(sprintf("%-14s fit %.2fs  profile %.2fs  uniroot %.2fs\n", name, res$seconds, t_prof, t_root))
  for (p in out$params) cat(sprintf("   %-20s %-7s %9.5f [%9.5f, %9.5f] [%9.5f, %9.5f] [%9.5f, %9.5f]\n",
                                    p$name, p$kind, p$estimate, p$profile[1], p$profile[2],
                                    p$uniroot[1], p$uniroot[2], p$tight[1], p$tight[2]))
}

case("gamma_subject", "rt ~ cond + (1 | subject)", "gammart", "Gamma(link = \"log\")",
     note = "betad = log shape: mlmext's scale = sigma()^2 = exp(-betad), the interval reversed")
case("nb1_mined", "count ~ mined + (1 | site)", "salamanders", "nbinom1",
     note = "mlmext's phi = sigma() = exp(betad)")
case("beta_g", "y ~ trt + x + (1 | g)", "betaprop", "beta_family()",
     note = "mlmext's phi = sigma() = exp(betad) (the precision)")
case("zip_int", "count ~ mined + (1 | site)", "salamanders", "poisson", zi = "~ 1")
case("hurdle_pois", "count ~ mined + (1 | site)", "salamanders", "truncated_poisson",
     zi = "~ mined")
case("nb2_mined", "count ~ mined + (1 | site)", "salamanders", "nbinom2",
     note = "betad = log theta: mlmext's alpha = 1 / sigma() = exp(-betad), the interval reversed")
## zero-inflated / hurdle NB2: log theta and the zi coefficients both free; one end each is NA
## (hurdle: the SD's profile reaches SD = 0 below the cutoff; ZINB: the zi slope's stays below it
## towards -inf), where mlmext reports a one-sided interval (0, -inf)
case("hurdle_nb", "count ~ mined + (1 | site)", "salamanders", "truncated_nbinom2",
     zi = "~ mined")
case("zinb_mined", "count ~ mined + (1 | site)", "salamanders", "nbinom2", zi = "~ mined")
