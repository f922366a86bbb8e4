## Reference fits for zero-inflated and hurdle NB1 GLMMs (tests/test_glmm_zeroinfl_nb1.py).
##
## glmmTMB's family = nbinom1 (Var = mu (1 + phi)) and truncated_nbinom1 with a ziformula, on
## the data of zi_hurdle_reference.R (read, not rewritten): Salamanders with species and mining
## in the count model (ZINB1 with zi = ~ 1; hurdle NB1 with zi = ~ mined), the simulated
## counts with an exposure offset (tests/data/zisim.csv: ZINB1 and hurdle NB1, zi = ~ z) and
## the correlated random slopes (x | g) of tests/data/zislope.csv (ZINB1, the dense path).
## (count ~ mined with zi = ~ mined is not identified for NB1: the zi coefficients or the
## hurdle's count intercept run off to +-inf, in glmmTMB as in mlmext.)
##
## Standard errors: sqrt(diag(vcov(fit))) -- glmmTMB's sdreport, the inverse Hessian in all
## fixed parameters; phi is sigma(fit) (nbinom1's dispersion), its log's SE from the full
## covariance.  Run from the repository root: Rscript tools/r_reference/zi_nb1_reference.R (~10 s)
source("tools/r_reference/common.R")
suppressPackageStartupMessages(library(glmmTMB))
REF_DIR <- "tests/reference/zi"
start_script("zi_nb1_reference.R", c(REF_DIR))
R_VERSIONS <- r_versions(c("glmmTMB", "TMB", "Matrix", "jsonlite"))
read_data("salamanders")
read_data("zisim")
read_data("zislope")

TMB_CTRL <- glmmTMBControl()

nb1_case <- function(name, formula, zi, family, data, modes = FALSE) {
  call_txt <- sprintf("glmmTMB(%s, ziformula = %s, data = %s, family = %s)",
                      formula, zi, data, family)
  t0 <- proc.time()[["elapsed"]]
  fit <- glmmTMB(as.formula(formula), ziformula = as.formula(zi), data = get(data),
                 family = family, control = TMB_CTRL)
  secs <- proc.time()[["elapsed"]] - t0
  stopifnot(fit$fit$convergence == 0, fit$sdr$pdHess)
  V <- vcov(fit)
  fe <- fixef(fit)
  Vfull <- vcov(fit, full = TRUE)
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
              phi = sigma(fit),
              se_log_phi = unname(sqrt(Vfull["d~(Intercept)", "d~(Intercept)"])))
  if (modes) {
    re <- ranef(fit)$cond[[1]]
    out$ranef <- list(levels = rownames(re), values = re[["(Intercept)"]])
    out$predict <- list(conditional = predict(fit, type = "conditional"),
                        zprob = predict(fit, type = "zprob"),
                        response = predict(fit, type = "response"))
  }
  write_ref(out, name, REF_DIR, R_VERSIONS)
  invisible(fit)
}

nb1_case("zinb1_spp", "count ~ spp + mined + (1 | site)", "~ 1", "nbinom1", "salamanders",
         modes = TRUE)
nb1_case("hurdle_nb1_spp", "count ~ spp + mined + (1 | site)", "~ mined", "truncated_nbinom1",
         "salamanders", modes = TRUE)
nb1_case("zisim_zinb1", "y ~ x + offset(log(t)) + (1 | g)", "~ z", "nbinom1", "zisim")
nb1_case("zisim_hurdle_nb1", "y ~ x + offset(log(t)) + (1 | g)", "~ z", "truncated_nbinom1",
         "zisim")
nb1_case("zislope_zinb1", "y ~ x + (x | g)", "~ z", "nbinom1", "zislope")
