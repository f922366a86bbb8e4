## R reference values for the parametric-bootstrap likelihood-ratio test (pbkrtest's PBmodcomp),
## tests/test_pb_cv.py.
##
## Run from the repository root:   Rscript tools/r_reference/pb_reference.R   (about 12 minutes)
##
## Writes tests/reference/pb/NAME.json and the simulated data set tests/data/pbsim.csv (with
## .levels.json).  Deterministic: the data are simulated after set.seed(), and each PBmodcomp
## run starts from its own seed.  Bootstrap p-values depend on R's random numbers, so the
## Python tests compare (a) the observed LRT exactly, (b) the summary rows (Gamma, Bartlett, F)
## computed from R's own stored reference distribution `ref`, and (c) the PBtest p-value
## statistically, within Monte-Carlo error (each file stores nsim and the p-value).
##
## Packages: lme4, pbkrtest, jsonlite (Debian: r-cran-lme4 r-cran-pbkrtest r-cran-jsonlite).

suppressPackageStartupMessages({
  library(lme4)
  library(pbkrtest)
})

source("tools/r_reference/common.R")
REF_DIR <- "tests/reference/pb"
start_script("pb_reference.R", REF_DIR)
R_VERSIONS <- r_versions(c("lme4", "pbkrtest"))

## ---- data -------------------------------------------------------------------------------
## 40 groups x 10 rows; weak effects of x on a count and a 0/1 response, so that the tests
## have moderate p-values (a bootstrap p-value near 0 says little about agreement).
set.seed(20261206)
ng <- 40; nper <- 10
g <- factor(sprintf("g%02d", rep(1:ng, each = nper)))
x <- rnorm(ng * nper)
b <- rnorm(ng, 0, 0.5)
y_count <- rpois(ng * nper, exp(0.5 + 0.03 * x + b[g]))
y_bin <- rbinom(ng * nper, 1, plogis(-0.3 + 0.12 * x + b[g]))
save_data(data.frame(y_count = y_count, y_bin = y_bin, x = rnd(x), g = g), "pbsim")
for (nm in c("sleepstudy", "cbpp")) read_data(nm)

## ---- cases ------------------------------------------------------------------------------
table_rows <- function(tab) {
  tab <- as.data.frame(tab)
  lapply(split(tab, factor(rownames(tab), levels = rownames(tab))),
         function(r) lapply(as.list(r[1, ]), function(v) if (is.na(v)) NULL else v))
}

pb_case <- function(name, large_call, small_call, data, formulas, family, nsim, seed) {
  large <- eval(parse(text = large_call))
  small <- eval(parse(text = small_call))
  warns <- character(0)
  t <- system.time(pb <- withCallingHandlers(
    PBmodcomp(large, small, nsim = nsim, seed = seed),
    warning = function(w) { warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning") }))
  s <- summary(pb)
  ml <- function(m) if (isLMM(m) && isREML(m)) update(m, REML = FALSE) else m
  write_ref(list(
    name = name, large_call = large_call, small_call = small_call, data = paste0(data, ".csv"),
    formula_large = formulas[["large"]], formula_small = formulas[["small"]], family = family,
    reml = isLMM(large) && isREML(large),
    loglik_ml = list(large = as.numeric(logLik(ml(large))), small = as.numeric(logLik(ml(small)))),
    LRTstat = as.list(pb$LRTstat), nsim = nsim, seed = seed,
    samples = as.list(s$samples), n_extreme = s$n.extreme,
    test = table_rows(pb$test), summary = table_rows(s$test),
    moment = as.list(s$moment), gamma = as.list(s$gamma),
    ref = as.numeric(pb$ref), r_seconds = t[["elapsed"]], n_warnings = length(warns),
    warnings = unique(warns)), name, REF_DIR, versions = R_VERSIONS)
  cat(name, ": LRT", pb$LRTstat[["tobs"]], " p.PB", s$test["PBtest", "p.value"],
      " npos", s$samples[["npos"]], " seconds", t[["elapsed"]], "\n")
}

pb_case("pb_sleepstudy_quad",
        "lmer(Reaction ~ Days + I(Days^2) + (Days | Subject), data = sleepstudy)",
        "lmer(Reaction ~ Days + (Days | Subject), data = sleepstudy)", "sleepstudy",
        c(large = "Reaction ~ Days + I(Days**2) + (Days | Subject)",
          small = "Reaction ~ Days + (Days | Subject)"),
        "gaussian", nsim = 3000, seed = 101)
pb_case("pb_pbsim_poisson",
        "glmer(y_count ~ x + (1 | g), data = pbsim, family = poisson)",
        "glmer(y_count ~ 1 + (1 | g), data = pbsim, family = poisson)", "pbsim",
        c(large = "y_count ~ x + (1 | g)", small = "y_count ~ 1 + (1 | g)"),
        "poisson", nsim = 1000, seed = 102)
pb_case("pb_pbsim_binomial",
        "glmer(y_bin ~ x + (1 | g), data = pbsim, family = binomial)",
        "glmer(y_bin ~ 1 + (1 | g), data = pbsim, family = binomial)", "pbsim",
        c(large = "y_bin ~ x + (1 | g)", small = "y_bin ~ 1 + (1 | g)"),
        "binomial", nsim = 1000, seed = 103)
pb_case("pb_cbpp",
        "glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), data = cbpp, family = binomial)",
        "glmer(cbind(incidence, size - incidence) ~ 1 + (1 | herd), data = cbpp, family = binomial)",
        "cbpp",
        c(large = "cbind(incidence, size - incidence) ~ period + (1 | herd)",
          small = "cbind(incidence, size - incidence) ~ 1 + (1 | herd)"),
        "binomial", nsim = 100, seed = 104)
