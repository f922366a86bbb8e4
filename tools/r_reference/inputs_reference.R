## lme4 reference fits for messy inputs: missing values, unused factor levels, zero weights,
## R's dotted names and subset expressions (issue 11).  Each case is the model lme4 fits to the
## data the Python test passes unchanged, so the Python side must build the same model frame:
##
##   messy_unused_slope   (0 + f | g) where f has an unused level "c"  -> no variance for "c"
##   messy_na_level       a character predictor whose level "zz" occurs only in rows with a
##                        missing x                                     -> no column for "zz"
##   messy_zero_weights   25 rows with weight 0: lme4 keeps them in n and reports logLik -Inf;
##                        the reference is lme4 on the rows with positive weight (what R's lm/glm
##                        and mlmext do)
##   messy_dotted         y.obs ~ x.1 + (1 | grp.id)                    -> R's names as written
##   messy_subset         subset = x > 0
##
## Run from the repository root:   Rscript tools/r_reference/inputs_reference.R
## Writes tests/data/messy.csv (+ .levels.json) and tests/reference/lmm/messy_*.json, which
## tests/test_lmm_reference.py checks like every other lme4 case.

suppressPackageStartupMessages(library(lme4))
source("tools/r_reference/common.R")
REF_DIR <- "tests/reference/lmm"
start_script("inputs_reference.R", c(DATA_DIR, REF_DIR))
R_VERSIONS <- r_versions(c("lme4", "Matrix", "jsonlite"))

set.seed(20261206)
n <- 300; ng <- 15
g <- sample(seq_len(ng), n, replace = TRUE)
x <- rnd(rnorm(n))
f <- sample(c("a", "b"), n, replace = TRUE)
s <- sample(c("p", "q"), n, replace = TRUE)
b0 <- rnorm(ng, sd = 0.8); bf <- rnorm(ng, sd = 0.5)
y <- rnd(1 + 0.6 * x + 0.4 * (f == "b") - 0.3 * (s == "q") + b0[g] + bf[g] * (f == "b") +
         rnorm(n))
w <- rnd(runif(n, 0.5, 2))
w[sample(n, 25)] <- 0
x[c(5, 17, 40, 41, 99, 150, 222, 280)] <- NA
s[17] <- "zz"                                   # only in a row dropped for its missing x
messy <- data.frame(y = y, x = x, g = g, f = factor(f, levels = c("a", "b", "c")), s = s, w = w)
messy$y.obs <- messy$y
messy$x.1 <- messy$x
messy$grp.id <- messy$g
save_data(messy, "messy")

## name, the formula the Python side passes, the R call that gives the reference, keys for Python
case <- function(name, formula, r_call, reml = TRUE, weights = NULL, subset = NULL, note = NULL) {
  res <- run_call(r_call)
  fit <- res$fit
  out <- c(list(
    name = name,
    r_call = r_call,
    data = "messy.csv",
    formula = formula,
    reml = isREML(fit),
    weights = weights,
    subset = subset,
    r_seconds = res$seconds,
    r_versions = R_VERSIONS,
    warnings = I(res$warnings),
    messages = I(res$messages),
    notes = I(as.character(note))),
    lme4_estimates(fit),
    list(aic = AIC(fit), bic = BIC(fit),
         deviance = if (isREML(fit)) NA else deviance(fit),
         reml_criterion = if (isREML(fit)) unname(REMLcrit(fit)) else NA,
         nobs = nobs(fit), ngrps = as.list(ngrps(fit)), sigma = sigma(fit),
         singular = isSingular(fit)),
    lme4_ranef(fit))
  write_ref(out, name, REF_DIR)
  cat(sprintf("%-22s %-40s nobs=%d  loglik=%.4f\n", name, formula, nobs(fit), logLik(fit)))
}

case("messy_unused_slope", "y ~ x + (0 + f | g)", "lme4::lmer(y ~ x + (0 + f | g), data = messy)")
case("messy_na_level", "y ~ x + s + (1 | g)", "lme4::lmer(y ~ x + s + (1 | g), data = messy)")
zw <- suppressWarnings(lme4::lmer(y ~ x + (1 | g), data = messy, weights = w))
case("messy_zero_weights", "y ~ x + (1 | g)",
     "lme4::lmer(y ~ x + (1 | g), data = messy[messy$w > 0, ], weights = w)", weights = "w",
     note = sprintf("lme4 on all rows (zero weights kept): nobs %d, logLik %s", nobs(zw),
                    format(as.numeric(logLik(zw)))))
case("messy_dotted", "y.obs ~ x.1 + (1 | grp.id)",
     "lme4::lmer(y.obs ~ x.1 + (1 | grp.id), data = messy, REML = FALSE)")
case("messy_subset", "y ~ x + (1 | g)", "lme4::lmer(y ~ x + (1 | g), data = messy, subset = x > 0)",
     subset = "x > 0")
