## Reference fits for the NB1 negative binomial and the beta GLMMs (tests/test_glmm_nb1_beta.py).
##
## glmmTMB (Laplace with the observed information, the family's parameter estimated with the
## others): family = nbinom1 (Var = mu (1 + phi), sigma() = phi) on glmmTMB's Salamanders, and
## family = beta_family() (logit link, y ~ Beta(mu phi, (1 - mu) phi), sigma() = phi, the
## precision) on simulated proportions.  Standard errors as in gamma_reference.R: the inverse of
## the Hessian of glmmTMB's objective by central differences of its exact (AD) gradient; vcov()'s
## are stored as se_vcov.  One model per family also stores the conditional modes (ranef()).
##
## Run from the repository root: Rscript tools/r_reference/nb1_beta_reference.R  (~1 min)
source("tools/r_reference/common.R")
suppressPackageStartupMessages(library(glmmTMB))
REF_DIR <- "tests/reference/nb1beta"
start_script("nb1_beta_reference.R", c(REF_DIR, DATA_DIR))
R_VERSIONS <- r_versions(c("glmmTMB", "TMB", "Matrix", "jsonlite"))

## ---- data: glmmTMB's Salamanders (tests/data/salamanders.csv, written by
## ---- glmm_optimum_reference.R: read back, not rewritten) and simulated proportions
read_data("salamanders")
stopifnot(nrow(salamanders) == 644)

set.seed(20261207)
ng <- 30; nr <- 12
g <- rep(seq_len(ng), each = nr)
trt <- factor(ifelse(seq_len(ng * nr) %% 3 == 0, "b", "a"))
x <- rnd(rnorm(ng * nr))
b0 <- rnorm(ng, 0, 0.5); b1 <- rnorm(ng, 0, 0.3)
eta <- -0.4 + 0.6 * (trt == "b") + 0.3 * x + b0[g] + b1[g] * x
mu <- plogis(eta)
phi <- 12
y <- rbeta(ng * nr, mu * phi, (1 - mu) * phi)
y <- pmin(pmax(rnd(y), 1e-6), 1 - 1e-6)      # 6 decimals, still inside (0, 1)
betaprop <- data.frame(g = factor(sprintf("g%02d", g)), trt = trt, x = x, y = y)
betaprop <- save_data(betaprop, "betaprop")

## ---- writers --------------------------------------------------------------------------------
tmb_varcorr <- function(fit) {
  vc <- VarCorr(fit)$cond
  rows <- list()
  for (gr in names(vc)) {
    sds <- attr(vc[[gr]], "stddev"); cr <- attr(vc[[gr]], "correlation")
    for (k in seq_along(sds))
      rows[[length(rows) + 1]] <- list(grp = gr, var1 = names(sds)[k], var2 = "",
                                       vcov = unname(sds[k])^2, sdcor = unname(sds[k]))
    if (length(sds) > 1) for (j in 1:(length(sds) - 1)) for (i in (j + 1):length(sds))
      rows[[length(rows) + 1]] <- list(grp = gr, var1 = names(sds)[j], var2 = names(sds)[i],
                                       vcov = vc[[gr]][i, j], sdcor = cr[i, j])
  }
  rows
}

tight_se <- function(fit) {
  env <- fit$obj$env
  p <- env$last.par.best[-env$random]
  H <- optimHess(p, fit$obj$fn, fit$obj$gr, control = list(ndeps = rep(1e-7, length(p))))
  V <- solve(H)
  k <- length(fixef(fit)$cond)
  list(se = sqrt(diag(V))[seq_len(k)], se_log_sigma = sqrt(V[nrow(V), nrow(V)]))
}

TMB_CTRL <- "glmmTMBControl(optCtrl = list(iter.max = 1e4, eval.max = 1e4, rel.tol = 1e-14))"

tmb_case <- function(name, formula, data, family, sigma_name, ranef = FALSE, note = NULL) {
  call_txt <- sprintf("glmmTMB::glmmTMB(%s, data = %s, family = %s, control = %s)",
                      formula, data, family, TMB_CTRL)
  res <- run_call(call_txt)
  fit <- res$fit
  ## the time of a default fit (the benchmark), median of 3
  dflt_txt <- sprintf("glmmTMB::glmmTMB(%s, data = %s, family = %s)", formula, data, family)
  tm <- median(replicate(3, system.time(eval(parse(text = dflt_txt)))[["elapsed"]]))
  fe <- fixef(fit)$cond
  se <- tight_se(fit)
  out <- list(
    name = name, r_call = call_txt, data = paste0(data, ".csv"), formula = formula,
    family = family, r_seconds = tm, r_versions = R_VERSIONS,
    warnings = I(unique(res$warnings)), messages = I(res$messages), notes = I(as.character(note)),
    optimizer_message = fit$fit$message, convergence = fit$fit$convergence,
    fixef = as.list(fe),
    se = as.list(setNames(se$se, names(fe))),
    se_vcov = as.list(setNames(sqrt(diag(vcov(fit)$cond)), names(fe))),
    varcorr = tmb_varcorr(fit),
    sigma_name = sigma_name, sigma = sigma(fit), se_log_sigma = se$se_log_sigma,
    loglik = as.numeric(logLik(fit)), aic = AIC(fit), bic = BIC(fit), nobs = nobs(fit),
    df = attr(logLik(fit), "df")
  )
  if (ranef) {
    re <- ranef(fit)$cond
    out$ranef <- lapply(re, function(df) list(levels = I(rownames(df)),
                                               values = lapply(df, function(v) I(v))))
    out$fitted_head <- I(unname(head(fitted(fit), 10)))
    out$pearson_head <- I(unname(head(residuals(fit, type = "pearson"), 10)))
    out$predict_link_head <- I(unname(head(predict(fit, type = "link"), 10)))
  }
  write_ref(out, name, REF_DIR)
  cat(sprintf("%-20s %-50s logLik=%.6f sigma=%.6f (%.1fs)\n", name, formula, out$loglik,
              out$sigma, tm))
  invisible(fit)
}

tmb_case("nb1_salamanders", "count ~ spp + mined + (1 | site)", "salamanders", "nbinom1",
         "phi (Var = mu (1 + phi))", ranef = TRUE)
tmb_case("nb1_crossed", "count ~ mined + cover + (1 | site) + (1 | spp)", "salamanders",
         "nbinom1", "phi (Var = mu (1 + phi))")
tmb_case("beta_g", "y ~ trt + x + (1 | g)", "betaprop", "beta_family()",
         "phi (precision: Var = mu (1 - mu) / (1 + phi))", ranef = TRUE)
tmb_case("beta_slope", "y ~ trt + x + (1 + x | g)", "betaprop", "beta_family()",
         "phi (precision: Var = mu (1 - mu) / (1 + phi))")
