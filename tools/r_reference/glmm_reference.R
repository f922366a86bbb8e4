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
## loglik_saturated(), ref_case(), tmb_case(), R_VERSIONS, TIGHT
source("tools/r_reference/glmm_common.R")

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
