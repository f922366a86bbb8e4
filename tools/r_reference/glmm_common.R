## The lme4 / glmmTMB case writers of the GLMM reference scripts (glmm_reference.R,
## glmm_optimum_reference.R).  Source after common.R; the caller sets REF_DIR.

R_VERSIONS <- r_versions(c("lme4", "glmmTMB", "TMB", "Matrix", "jsonlite"))
TIGHT <- "glmerControl(tolPwrss = 1e-12)"

## saturated log-likelihood of the response (mu = y) for the family of a fit
loglik_saturated <- function(fit) {
  y <- getME(fit, "y"); w <- weights(fit)
  fam <- family(fit)$family
  if (fam == "binomial") return(sum(dbinom(round(w * y), round(w), y, log = TRUE)))
  if (fam == "poisson") return(sum(w * dpois(y, y, log = TRUE)))
  th <- getME(fit, "glmer.nb.theta")
  sum(w * dnbinom(y, size = th, mu = y, log = TRUE))
}

## the estimates kept for the second lme4 fit of a case (lme4_default / lme4_tight)
summary_of <- function(fit) lme4_estimates(fit, c("fixef", "se", "theta", "loglik"))

## ---- one lme4 case ------------------------------------------------------------------------
## formula: the string the Python side passes; r_formula: the same model in R syntax;
## family: "binomial", "poisson" or "negbin" (glmer.nb); link: R link name; nagq: nAGQ;
## extra: NULL or function(fit, default_fit) giving more keys for the file (appended).
ref_case <- function(name, formula, data, family, link = NULL, nagq = 1, weights = NULL,
                     offset = NULL, r_formula = formula, note = NULL, extra = NULL) {
  make_call <- function(control) {
    fam <- if (family == "negbin") NULL else if (is.null(link)) family else sprintf("%s(link = \"%s\")", family, link)
    args <- c(sprintf("data = %s", data))
    if (!is.null(fam)) args <- c(args, sprintf("family = %s", fam))
    if (nagq != 1) args <- c(args, sprintf("nAGQ = %d", nagq))
    if (!is.null(weights)) args <- c(args, sprintf("weights = %s", weights))
    if (!is.null(offset)) args <- c(args, sprintf("offset = %s", offset))
    if (!is.null(control)) args <- c(args, sprintf("control = %s", control))
    fun <- if (family == "negbin") "lme4::glmer.nb" else "lme4::glmer"
    sprintf("%s(%s, %s)", fun, r_formula, paste(args, collapse = ", "))
  }
  main <- run_call(make_call(TIGHT))
  dflt <- run_call(make_call(NULL))
  fit <- main$fit
  out <- c(list(
    name = name,
    r_call = make_call(TIGHT),
    data = paste0(data, ".csv"),
    formula = formula,
    family = family,
    link = if (is.null(link)) family(fit)$link else link,
    nagq = nagq,
    weights = weights,
    offset = offset,
    r_seconds = dflt$seconds,
    r_versions = R_VERSIONS,
    warnings = I(main$warnings),
    messages = I(main$messages),
    notes = I(as.character(note))),
    lme4_estimates(fit),   # fixef, se, varcorr, theta, theta_names, loglik
    list(
    loglik_saturated = loglik_saturated(fit),
    aic = AIC(fit),
    bic = BIC(fit),
    nobs = nobs(fit),
    ngrps = as.list(ngrps(fit)),
    singular = isSingular(fit)),
    lme4_ranef(fit),       # ranef, condsd
    list(lme4_default = c(list(r_call = make_call(NULL), warnings = I(dflt$warnings)), summary_of(dflt$fit)))
  )
  if (family == "negbin") {
    out$nb_theta <- getME(fit, "glmer.nb.theta")
    out$lme4_default$nb_theta <- getME(dflt$fit, "glmer.nb.theta")
  }
  if (!is.null(extra)) out <- c(out, extra(fit, dflt$fit))
  write_ref(out, name, REF_DIR)
  cat(sprintf("%-22s %-70s logLik=%.6f (default %.6f)\n", name, formula, out$loglik, out$lme4_default$loglik))
  invisible(fit)
}

## ---- one glmmTMB case (exact Laplace: Hessian of the joint log-likelihood in the modes) --------
tmb_case <- function(name, formula, data, family, r_formula = formula, note = NULL) {
  call_txt <- sprintf("glmmTMB::glmmTMB(%s, data = %s, family = %s)", r_formula, data, family)
  res <- run_call(call_txt)
  fit <- res$fit
  fe <- fixef(fit)$cond
  vc <- VarCorr(fit)$cond
  vc_rows <- list()
  for (g in names(vc)) {
    sds <- attr(vc[[g]], "stddev")
    for (k in seq_along(sds)) vc_rows[[length(vc_rows) + 1]] <- list(grp = g, var1 = names(sds)[k], var2 = "",
                                                                      vcov = sds[k]^2, sdcor = unname(sds[k]))
  }
  out <- list(
    name = name, r_call = call_txt, data = paste0(data, ".csv"), formula = formula,
    family = family, r_seconds = res$seconds, r_versions = R_VERSIONS,
    warnings = I(res$warnings), messages = I(res$messages), notes = I(as.character(note)),
    fixef = as.list(fe),
    se = as.list(setNames(sqrt(diag(vcov(fit)$cond)), names(fe))),
    varcorr = vc_rows,
    loglik = as.numeric(logLik(fit)), aic = AIC(fit), bic = BIC(fit), nobs = nobs(fit),
    nb_theta = if (grepl("nbinom2", family)) sigma(fit) else NULL
  )
  write_ref(out, name, REF_DIR)
  cat(sprintf("%-22s %-70s logLik=%.6f (glmmTMB)\n", name, formula, out$loglik))
  invisible(fit)
}
