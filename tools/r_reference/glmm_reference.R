## lme4 / glmmTMB reference fits for the mlmext GLMM test suite.
##
## Run from the repository root:   Rscript tools/r_reference/glmm_reference.R
##
## Writes
##   tests/data/NAME.csv[.gz], tests/data/NAME.levels.json   (datasets; R's factor level order)
##   tests/reference/glmm/NAME.json                          (one fit per file)
## and imports the four GLMM cases of the shared development set (../shared/reference; env
## MLMEXT_SHARED overrides) with added keys only (see import_shared() at the end).
##
## Each model is fitted on the data as read back from the CSV the Python side reads.  Simulated
## data use fixed seeds.  For every lme4 case two fits are recorded:
##   * the main one with glmerControl(tolPwrss = 1e-12): lme4's PIRLS then finds the conditional
##     modes to full precision, so the Laplace objective (and its finite-difference Hessian, i.e.
##     the standard errors) is the exact one;
##   * "lme4_default": the same call with lme4's default tolPwrss = 1e-7.  Its deviance carries
##     errors of order 1e-4..1e-3 (the Laplace determinant is taken at the last-but-one PIRLS
##     iterate), which moves the estimates by ~0.001 SE and the SEs by up to ~0.5 %.
## For nAGQ > 1, lme4's logLik omits the saturated log-likelihood of the family; it is stored as
## "loglik_saturated" (full-scale log-likelihood = logLik + loglik_saturated).

suppressPackageStartupMessages({
  library(lme4)
  library(glmmTMB)
})

## save_data(), read_data(), run_call(), lme4_estimates(), lme4_ranef(), write_ref(), ...
source("tools/r_reference/common.R")
REF_DIR <- "tests/reference/glmm"
start_script("glmm_reference.R", c(DATA_DIR, REF_DIR))
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
## family: "binomial", "poisson" or "negbin" (glmer.nb); link: R link name; nagq: nAGQ.
ref_case <- function(name, formula, data, family, link = NULL, nagq = 1, weights = NULL,
                     offset = NULL, r_formula = formula, note = NULL) {
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

## ---- datasets -------------------------------------------------------------------------------
## binary responses with a correlated random intercept and slope
set.seed(20240601)
ng <- 50; nper <- 20
S <- diag(c(1.0, 0.6)) %*% matrix(c(1, 0.4, 0.4, 1), 2) %*% diag(c(1.0, 0.6))
b <- matrix(rnorm(ng * 2), ng, 2) %*% chol(S)
g <- rep(seq_len(ng), each = nper)
x <- rnd(rnorm(ng * nper))
eta <- -0.3 + 0.8 * x + b[g, 1] + b[g, 2] * x
binslope <- data.frame(y = rbinom(ng * nper, 1, plogis(eta)), x = x, g = factor(sprintf("g%02d", g)))
save_data(binslope, "binslope")

## counts with an exposure (offset log(t)) and a grouping factor
set.seed(20240602)
ng <- 40; nper <- 12
g <- rep(seq_len(ng), each = nper)
t <- rnd(runif(ng * nper, 0.5, 3))
x <- rnd(rnorm(ng * nper))
eta <- log(t) + 0.4 + 0.5 * x + rnorm(ng, sd = 0.6)[g]
pois_offset <- data.frame(y = rpois(ng * nper, exp(eta)), x = x, t = t, g = factor(sprintf("g%02d", g)))
save_data(pois_offset, "pois_offset")

## nested counts: sites within regions (site labels repeat within regions)
set.seed(20240603)
nr <- 12; ns <- 5; nper <- 6
d <- expand.grid(obs = seq_len(nper), site = seq_len(ns), region = seq_len(nr))
ur <- rnorm(nr, sd = 0.5); us <- rnorm(nr * ns, sd = 0.4)
d$x <- rnd(rnorm(nrow(d)))
eta <- 1 + 0.3 * d$x + ur[d$region] + us[(d$region - 1) * ns + d$site]
pois_nested <- data.frame(y = rpois(nrow(d), exp(eta)), x = d$x,
                          region = factor(sprintf("R%02d", d$region)), site = factor(sprintf("s%d", d$site)))
save_data(pois_nested, "pois_nested")

## VerbAgg (lme4) for the crossed binomial model (7584 rows, 316 x 24 crossed levels)
va <- lme4::VerbAgg
va <- data.frame(r2 = va$r2, Anger = va$Anger, Gender = va$Gender, btype = va$btype, situ = va$situ,
                 mode = va$mode, id = va$id, item = va$item)
va$situ <- factor(as.character(va$situ), levels = levels(va$situ))   # plain (unordered) factors
va$btype <- factor(as.character(va$btype), levels = levels(va$btype))
va$mode <- factor(as.character(va$mode), levels = levels(va$mode))
save_data(va, "verbagg", gz = TRUE)

## shared data sets (byte-identical copies, checked below)
shared <- shared_dir()
for (nm in c("cbpp", "grouseticks")) {
  copy_shared_data(nm, shared)
  read_data(nm)
}

## ---- cases ------------------------------------------------------------------------------------
ref_case("binom_slope", "y ~ x + (1 + x | g)", "binslope", "binomial")
ref_case("verbagg_crossed", "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)", "verbagg", "binomial")
ref_case("pois_offset", "y ~ x + offset(np.log(t)) + (1 | g)", "pois_offset", "poisson",
         r_formula = "y ~ x + offset(log(t)) + (1 | g)")
ref_case("pois_offset_agq", "y ~ x + offset(np.log(t)) + (1 | g)", "pois_offset", "poisson", nagq = 12,
         r_formula = "y ~ x + offset(log(t)) + (1 | g)")
ref_case("pois_nested", "y ~ x + (1 | region/site)", "pois_nested", "poisson")
ref_case("cbpp_probit", "cbind(incidence, size - incidence) ~ period + (1 | herd)", "cbpp", "binomial",
         link = "probit")
ref_case("cbpp_cloglog_agq", "cbind(incidence, size - incidence) ~ period + (1 | herd)", "cbpp", "binomial",
         link = "cloglog", nagq = 9)
ref_case("grouseticks_negbin_2re", "TICKS ~ YEAR + cHEIGHT + (1 | LOCATION) + (1 | BROOD)", "grouseticks", "negbin")
tmb_case("grouseticks_nb_tmb", "TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", "grouseticks", "nbinom2",
         note = "glmmTMB: Laplace with the observed information (information='observed' in mlmext)")

## ---- import the shared GLMM cases ------------------------------------------------------------
## Keeps every key of the shared file and adds formula, family, link, nagq, loglik_saturated,
## r_versions and lme4_tight (the same call with tolPwrss = 1e-12).
import_shared <- function() {
  cases <- list(
    cbpp_laplace = list(formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)",
                        family = "binomial", nagq = 1, data = "cbpp"),
    cbpp_agq25 = list(formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)",
                      family = "binomial", nagq = 25, data = "cbpp"),
    grouseticks_poisson = list(formula = "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)",
                               family = "poisson", nagq = 1, data = "grouseticks"),
    grouseticks_negbin = list(formula = "TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)",
                              family = "negbin", nagq = 1, data = "grouseticks"))
  for (nm in names(cases)) {
    src <- file.path(shared, "reference", paste0(nm, ".json"))
    if (!file.exists(src)) { cat("shared case", nm, "not found - skipped\n"); next }
    ref <- fromJSON(src, simplifyVector = FALSE)
    cs <- cases[[nm]]
    call_txt <- ref$r_call
    call_txt <- sub("data = gt\\)$", "data = grouseticks)", call_txt)
    call_txt <- sub("data = transform\\(gt,.*\\)\\)$", "data = grouseticks)", call_txt)
    call_txt <- sub("data = cbpp", "data = cbpp", call_txt)
    dflt <- run_call(call_txt)$fit
    tight <- NULL
    for (tol in c("1e-12", "1e-10", "1e-9")) {   # glmer.nb's theta search can stall at 1e-12
      tight_txt <- sub("\\)$", sprintf(", control = glmerControl(tolPwrss = %s))", tol), call_txt)
      tight <- tryCatch(run_call(tight_txt)$fit, error = function(e) NULL)
      if (!is.null(tight)) break
    }
    stopifnot(!is.null(tight))
    stopifnot(abs(as.numeric(logLik(dflt)) - ref$loglik) < 1e-6)   # same data, same fit as shared
    add <- list(formula = cs$formula, family = cs$family,
                link = family(dflt)$link, nagq = cs$nagq,
                loglik_saturated = loglik_saturated(dflt),
                r_versions = R_VERSIONS,
                lme4_tight = c(list(r_call = tight_txt), summary_of(tight)))
    if (cs$family == "negbin") add$lme4_tight$nb_theta <- getME(tight, "glmer.nb.theta")
    out <- c(ref[1:which(names(ref) == "data")], add, ref[-(1:which(names(ref) == "data"))])
    write_ref(out, nm, REF_DIR)
    cat(sprintf("%-22s imported (logLik %.6f; tight %.6f)\n", nm, ref$loglik, as.numeric(logLik(tight))))
  }
}
import_shared()
