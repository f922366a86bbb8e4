## R reference values for LMMs with residual correlation within groups (nlme's lme with
## corAR1 / corCAR1 / corCompSymm), read by tests/test_lmm_correlation.py.
##
## Run from the repository root:   Rscript tools/r_reference/corr_reference.R
##
## Writes tests/reference/corr/NAME.json, tests/data/sleepgaps.csv and orthodont.csv, and the
## simulated data sets tests/data/carsim.csv
## (irregular times, for corCAR1) and tests/data/cssim.csv (pupils in classes in schools, for
## corCompSymm within classes).  Deterministic (set.seed); every model is fitted on the data as
## read back from the CSV the Python side reads.  Packages: nlme, jsonlite.

suppressPackageStartupMessages(library(nlme))
source("tools/r_reference/common.R")
REF_DIR <- "tests/reference/corr"
start_script("corr_reference.R", REF_DIR)
R_VERSIONS <- r_versions(c("nlme"))

## ---- data -------------------------------------------------------------------------------
read_data("sleepstudy")
## sleepstudy with rows removed: AR(1) on integer times with gaps (nlme then uses rho^|dt|)
sleepgaps <- sleepstudy[-c(3, 5, 6, 14, 27, 28, 41, 59, 60, 62, 95, 101, 133, 150, 177), ]
rownames(sleepgaps) <- NULL
save_data(sleepgaps, "sleepgaps")
## nlme's Orthodont (random slopes with AR(1); a negative Phi); occ = visit 0..3
orthodont <- data.frame(distance = Orthodont$distance, age = Orthodont$age,
                        occ = (Orthodont$age - 8) / 2,
                        Subject = factor(as.character(Orthodont$Subject)),
                        Sex = factor(as.character(Orthodont$Sex), levels = c("Male", "Female")))
save_data(orthodont, "orthodont")

set.seed(18)     # irregular times: 40 subjects, 4 to 9 visits at uniform times in (0, 10)
ns <- 40
rows <- lapply(seq_len(ns), function(i) {
  k <- sample(4:9, 1)
  t <- sort(round(runif(k, 0, 10), 3))
  b <- rnorm(1, 0, 1.5)
  e <- numeric(k); e[1] <- rnorm(1)
  for (j in seq_len(k)[-1]) { a <- 0.7^(t[j] - t[j - 1]); e[j] <- a * e[j - 1] + sqrt(1 - a^2) * rnorm(1) }
  data.frame(id = sprintf("s%02d", i), time = t, x = round(rnorm(k), 4),
             y = rnd(2 + 0.4 * t + b + 1.2 * e))
})
carsim <- do.call(rbind, rows)
carsim$id <- factor(carsim$id)
carsim <- carsim[sample(nrow(carsim)), ]     # rows out of time order: the fit must sort them
save_data(carsim, "carsim")

set.seed(81)     # 25 schools x 4 classes x 4-8 pupils; exchangeable residuals within a class
cs <- do.call(rbind, lapply(1:25, function(s) {
  bs <- rnorm(1, 0, 1)
  do.call(rbind, lapply(1:4, function(k) {
    n <- sample(4:8, 1); x <- rnorm(n)
    e <- sqrt(0.35) * rnorm(1) + sqrt(0.65) * rnorm(n)
    data.frame(school = sprintf("sc%02d", s), class = sprintf("c%d", k), pupil = seq_len(n),
               x = round(x, 4), y = rnd(1 + 0.5 * x + bs + e))
  }))
}))
cs$school <- factor(cs$school); cs$class <- factor(cs$class)
save_data(cs, "cssim")

## ---- fits -------------------------------------------------------------------------------
fit_case <- function(name, data, fixed, random, cor_call, reml, control = "") {
  call <- sprintf("lme(%s, random = %s, data = %s, correlation = %s, method = '%s'%s)",
                  fixed, random, data, cor_call, if (reml) "REML" else "ML", control)
  run <- run_call(call)
  m <- run$fit
  out <- list(
    r_call = call, data = data, reml = reml,
    fixef = as.list(fixef(m)),
    se = as.list(sqrt(diag(vcov(m)))),
    sigma = m$sigma,
    re_sd = unname(sqrt(diag(pdMatrix(m$modelStruct$reStruct)[[1]])) * m$sigma),
    ## per grouping level (nested fits: nlme's names, e.g. "school", "class")
    re_sd_levels = lapply(pdMatrix(m$modelStruct$reStruct), function(p) unname(sqrt(diag(p)) * m$sigma)),
    cor_param = unname(coef(m$modelStruct$corStruct, unconstrained = FALSE)),
    loglik = as.numeric(logLik(m)),
    df = attr(logLik(m), "df"),
    aic = AIC(m), bic = BIC(m),
    fitted0 = unname(fitted(m, level = 0)),
    fitted1 = unname(fitted(m)),           # all levels of random effects (nlme's innermost)
    warnings = run$warnings, seconds = run$seconds)
  write_ref(out, name, REF_DIR, versions = R_VERSIONS)
  invisible(m)
}

for (reml in c(TRUE, FALSE)) {
  tag <- if (reml) "reml" else "ml"
  fit_case(paste0("ar1_sleep_", tag), "sleepstudy", "Reaction ~ Days", "~ 1 | Subject",
           "corAR1(form = ~ Days | Subject)", reml)
  fit_case(paste0("ar1_orthodont_", tag), "orthodont", "distance ~ age + Sex", "~ age | Subject",
           "corAR1(form = ~ occ | Subject)", reml)
  fit_case(paste0("ar1_gaps_", tag), "sleepgaps", "Reaction ~ Days", "~ 1 | Subject",
           "corAR1(form = ~ Days | Subject)", reml)
  fit_case(paste0("car1_", tag), "carsim", "y ~ time + x", "~ 1 | id",
           "corCAR1(form = ~ time | id)", reml)
  fit_case(paste0("cs_", tag), "cssim", "y ~ x", "~ 1 | school",
           "corCompSymm(form = ~ 1 | school/class)", reml)
  ## two nested random intercepts; AR(1) along the pupils of a class (the inner level)
  fit_case(paste0("ar1_nested_", tag), "cssim", "y ~ x", "~ 1 | school/class",
           "corAR1(form = ~ pupil | school/class)", reml)
}

## ---- timing (benchmark only; no test reads it) --------------------------------------------
t <- system.time(for (i in 1:20) lme(Reaction ~ Days, random = ~ 1 | Subject, data = sleepstudy,
                                     correlation = corAR1(form = ~ Days | Subject)))[["elapsed"]] / 20
t2 <- system.time(for (i in 1:5) lme(y ~ time + x, random = ~ 1 | id, data = carsim,
                                     correlation = corCAR1(form = ~ time | id)))[["elapsed"]] / 5
write_ref(list(ar1_sleep_reml_seconds = t, car1_reml_seconds = t2), "timing", REF_DIR,
          versions = R_VERSIONS)
