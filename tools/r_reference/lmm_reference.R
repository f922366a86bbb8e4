## lme4 reference fits for the mlmext LMM test suite.
##
## Run from the repository root:   Rscript tools/r_reference/lmm_reference.R
##
## Writes
##   tests/data/NAME.csv, tests/data/NAME.levels.json   (datasets; factor level order as in R)
##   tests/reference/lmm/NAME.json                      (one lme4 fit per file)
## and, when ../shared/reference is present (env MLMEXT_SHARED overrides the location),
## imports the eight LMM cases of the shared development set unchanged except for added
## "formula", "reml" and "r_versions" keys (see import_shared() at the end).
##
## Every model is fitted on the data as read back from the CSV that the Python side reads,
## so both sides see bit-identical inputs. Simulated data use fixed seeds.

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)   # only for as_lmerModLmerTest(); the fits themselves are lme4::lmer
})

## save_data(), run_call(), lme4_estimates(), lme4_ranef(), write_ref(), import_with_lines(), ...
source("tools/r_reference/common.R")
REF_DIR <- "tests/reference/lmm"
start_script("lmm_reference.R", c(DATA_DIR, REF_DIR))
R_VERSIONS <- r_versions(c("lme4", "lmerTest", "Matrix", "nloptr", "minqa", "jsonlite"))

## ---- one reference case -------------------------------------------------------------------
## name: case (file) name; formula: the string the Python side passes; r_formula: the same model
## in R syntax when it differs; data: name of a dataset made by save_data(); reml: TRUE/FALSE;
## weights / offset: column names (documentation keys; the R syntax carries them).
ref_case <- function(name, formula, data, reml = TRUE, weights = NULL, offset = NULL,
                     r_formula = formula, note = NULL) {
  make_call <- function(control) {
    args <- c(sprintf("data = %s", data), sprintf("REML = %s", reml))
    if (!is.null(weights)) args <- c(args, sprintf("weights = %s", weights))
    if (!is.null(control)) args <- c(args, sprintf("control = %s", control))
    sprintf("lme4::lmer(%s, %s)", r_formula, paste(args, collapse = ", "))
  }
  run <- function(call_txt) {
    res <- run_call(call_txt)
    res$conv <- res$fit@optinfo$conv$lme4$messages
    res
  }
  r_call <- make_call(NULL)
  res <- run(r_call)
  failed <- function(r) any(grepl("converge", c(r$warnings, r$conv), ignore.case = TRUE))
  notes <- character(0)
  if (failed(res)) {   # default optimizer did not converge: refit with bobyqa, keep both records
    notes <- c(notes, paste("default optimizer warnings:", paste(c(res$warnings, res$conv), collapse = " | ")))
    r_call <- make_call('lmerControl(optimizer = "bobyqa")')
    res <- run(r_call)
  }
  fit <- res$fit

  out <- c(list(
    name = name,
    r_call = r_call,
    data = paste0(data, ".csv"),
    formula = formula,
    reml = isREML(fit),
    weights = weights,
    offset = offset,
    r_seconds = res$seconds,
    r_versions = R_VERSIONS,
    optimizer = fit@optinfo$optimizer,
    warnings = I(res$warnings),            # R warnings raised by lmer()
    messages = I(res$messages),            # R messages, e.g. lme4's "boundary (singular) fit"
    conv_messages = I(as.character(res$conv)),          # fit@optinfo$conv$lme4$messages
    notes = I(c(notes, note))),
    lme4_estimates(fit),   # fixef, se, varcorr, theta, theta_names, loglik
    list(
    aic = AIC(fit),
    bic = BIC(fit),
    deviance = if (isREML(fit)) NA else deviance(fit),
    reml_criterion = if (isREML(fit)) unname(REMLcrit(fit)) else NA,
    nobs = nobs(fit),
    ngrps = as.list(ngrps(fit)),
    sigma = sigma(fit),
    singular = isSingular(fit)),
    lme4_ranef(fit)        # ranef, condsd
  )
  if (reml) {
    lt <- withCallingHandlers(summary(lmerTest::as_lmerModLmerTest(fit))$coefficients,
      warning = function(w) { out$warnings <<- I(c(out$warnings, paste("lmerTest:", conditionMessage(w))))
                              invokeRestart("muffleWarning") })
    out$satterthwaite_df <- as.list(lt[, "df"])
    out$p_values <- as.list(lt[, "Pr(>|t|)"])
  }
  write_ref(out, name, REF_DIR)
  cat(sprintf("%-28s %-55s %s  singular=%s  warnings=%d\n", name, formula, if (reml) "REML" else "ML  ",
              isSingular(fit), length(out$warnings)))
  invisible(fit)
}

## ---- data ---------------------------------------------------------------------------------
save_data(lme4::sleepstudy, "sleepstudy")   # Subject: factor whose labels are integers ("308", ...)
ss <- lme4::sleepstudy
ss$w <- 1 + (ss$Days %% 3) / 2              # deterministic positive weights 1, 1.5, 2
ss$off <- ss$Days * 2                       # offset column
save_data(ss, "sleepstudy_aug")
save_data(lme4::Penicillin, "penicillin")
save_data(lme4::Pastes, "pastes")
mach <- as.data.frame(nlme::Machines)[, c("score", "Machine", "Worker")]
mach$Worker <- factor(as.character(mach$Worker), levels = levels(mach$Worker))   # nlme's level order, unordered
save_data(mach, "machines")

## three-level nesting; school and class labels repeat within their parent
set.seed(20240501)
nest <- expand.grid(pupil = 1:6, class = paste0("C", 1:5), school = paste0("S", 1:4),
                    region = paste0("R", 1:8), stringsAsFactors = FALSE)
u_region <- rnorm(8, sd = 1.0)
u_school <- rnorm(8 * 4, sd = 0.7)
u_class <- rnorm(8 * 4 * 5, sd = 0.5)
ir <- match(nest$region, paste0("R", 1:8))
i_s <- (ir - 1) * 4 + match(nest$school, paste0("S", 1:4))
ic <- (i_s - 1) * 5 + match(nest$class, paste0("C", 1:5))
nest$x <- rnd(rnorm(nrow(nest)))
nest$y <- rnd(2 + 0.5 * nest$x + u_region[ir] + u_school[i_s] + u_class[ic] + rnorm(nrow(nest)))
nested3 <- data.frame(y = nest$y, x = nest$x,
                      region = factor(nest$region, levels = paste0("R", 1:8)),
                      school = factor(nest$school, levels = paste0("S", 1:4)),
                      class = factor(nest$class, levels = paste0("C", 1:5)))
save_data(nested3, "nested3")

## two correlated random slopes: 3 x 3 covariance, 40 groups x 15 obs
set.seed(20240502)
ng <- 40; nper <- 15
sds <- c(1.0, 0.6, 0.4)
R <- matrix(c(1, 0.5, -0.3,
              0.5, 1, 0.2,
              -0.3, 0.2, 1), 3, 3)
S <- diag(sds) %*% R %*% diag(sds)
b <- matrix(rnorm(ng * 3), ng, 3) %*% chol(S)
g <- rep(seq_len(ng), each = nper)
x1 <- rnd(rnorm(ng * nper)); x2 <- rnd(rnorm(ng * nper))
y <- rnd(1 + 0.5 * x1 - 0.7 * x2 + b[g, 1] + b[g, 2] * x1 + b[g, 3] * x2 + rnorm(ng * nper, sd = 0.8))
slopes3 <- data.frame(y = y, x1 = x1, x2 = x2, g = factor(sprintf("G%02d", g)))
save_data(slopes3, "slopes3")

## random slope of x by level of a 2-level factor f: (0 + x:f | g)
set.seed(20240503)
ng <- 30; nper <- 20
S <- diag(c(0.8, 0.5)) %*% matrix(c(1, 0.6, 0.6, 1), 2) %*% diag(c(0.8, 0.5))
b <- matrix(rnorm(ng * 2), ng, 2) %*% chol(S)
g <- rep(seq_len(ng), each = nper)
f <- rep(rep(c("a", "b"), each = nper / 2), ng)
x <- rnd(rnorm(ng * nper))
fb <- as.numeric(f == "b")
y <- rnd(1 + 0.3 * fb + x * (0.5 - 0.4 * fb) + x * ifelse(fb == 1, b[g, 2], b[g, 1]) + rnorm(ng * nper))
xf <- data.frame(y = y, x = x, f = factor(f, levels = c("a", "b")), g = factor(sprintf("g%02d", g)))
save_data(xf, "xf_slopes")

## crossed subjects x items, correlated intercept/slope on subjects
set.seed(20240504)
ns <- 30; ni <- 20
cr <- expand.grid(item = seq_len(ni), subj = seq_len(ns))
S <- diag(c(1.0, 0.5)) %*% matrix(c(1, 0.3, 0.3, 1), 2) %*% diag(c(1.0, 0.5))
bs <- matrix(rnorm(ns * 2), ns, 2) %*% chol(S)
bi <- rnorm(ni, sd = 0.7)
cr$x <- rnd(rnorm(nrow(cr)))
cr$y <- rnd(3 + 0.4 * cr$x + bs[cr$subj, 1] + bs[cr$subj, 2] * cr$x + bi[cr$item] + rnorm(nrow(cr)))
crossed <- data.frame(y = cr$y, x = cr$x, subj = factor(sprintf("s%02d", cr$subj)),
                      item = factor(sprintf("i%02d", cr$item)))
save_data(crossed, "crossed")

## singular: no group effect at all (10 groups x 10 obs of pure noise around a line)
set.seed(20240505)
sg <- data.frame(g = factor(sprintf("g%02d", rep(1:10, each = 10))))
sg$x <- rnd(rnorm(100))
sg$y <- rnd(1 + 0.5 * sg$x + rnorm(100))
singular <- sg[, c("y", "x", "g")]
save_data(singular, "singular")

## ---- cases ----------------------------------------------------------------------------------
## 1. sleepstudy
ref_case("sleepstudy_corr_reml", "Reaction ~ Days + (Days | Subject)", "sleepstudy", TRUE)
ref_case("sleepstudy_corr_ml", "Reaction ~ Days + (Days | Subject)", "sleepstudy", FALSE)
ref_case("sleepstudy_diag", "Reaction ~ Days + (Days || Subject)", "sleepstudy", TRUE)
ref_case("sleepstudy_two_terms", "Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)", "sleepstudy", TRUE)
ref_case("sleepstudy_slope_only", "Reaction ~ Days + (-1 + Days | Subject)", "sleepstudy", TRUE)
ref_case("sleepstudy_explicit_ml", "Reaction ~ Days + (1 + Days | Subject)", "sleepstudy", FALSE)
ref_case("sleepstudy_quadratic", "Reaction ~ Days + I(Days^2) + (1 | Subject)", "sleepstudy", TRUE)
ref_case("sleepstudy_weighted", "Reaction ~ Days + (Days | Subject)", "sleepstudy_aug", TRUE, weights = "w")
ref_case("sleepstudy_offset", "Reaction ~ Days + offset(off) + (1 | Subject)", "sleepstudy_aug", TRUE, offset = "off")
## 2. Penicillin, crossed
ref_case("penicillin_reml", "diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin", TRUE)
ref_case("penicillin_ml", "diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin", FALSE)
## 3. Pastes, nested: `/` and its explicit expansion
ref_case("pastes_slash", "strength ~ 1 + (1 | batch/cask)", "pastes", TRUE)
ref_case("pastes_explicit", "strength ~ 1 + (1 | batch) + (1 | batch:cask)", "pastes", TRUE)
## 4. three-level nesting
ref_case("nested3_reml", "y ~ x + (1 | region/school/class)", "nested3", TRUE)
## 5. two correlated random slopes (3 x 3)
ref_case("slopes3_reml", "y ~ x1 + x2 + (x1 + x2 | g)", "slopes3", TRUE)
ref_case("slopes3_ml", "y ~ x1 + x2 + (x1 + x2 | g)", "slopes3", FALSE)
## 6. categorical random slope (nlme::Machines)
ref_case("machines_factor_slope", "score ~ Machine + (0 + Machine | Worker)", "machines", TRUE)
ref_case("machines_nested_intercepts", "score ~ Machine + (1 | Worker) + (1 | Worker:Machine)", "machines", TRUE)
## 7. I() and an interaction inside the bar
ref_case("sleepstudy_I_in_bar", "Reaction ~ Days + (1 + I(Days/10) | Subject)", "sleepstudy", TRUE)
ref_case("xf_interaction_slopes", "y ~ x * f + (0 + x:f | g)", "xf_slopes", TRUE)
## 8. crossed factors, slope on one of them
ref_case("crossed_slope", "y ~ x + (1 + x | subj) + (1 | item)", "crossed", TRUE)
## 9. singular fit
fit <- ref_case("singular_intercept", "y ~ x + (1 | g)", "singular", TRUE)
stopifnot(isSingular(fit))

## ---- import the shared development set --------------------------------------------------
## Text-level insertion after the "data" line, so every stored value stays byte-identical.
import_shared <- function(shared = shared_dir()) {
  if (!dir.exists(file.path(shared, "reference"))) {
    cat("shared reference set not found at", shared, "- import skipped\n")
    return(invisible(NULL))
  }
  cases <- list(
    sleepstudy_reml = c("Reaction ~ Days + (Days | Subject)", "true"),
    sleepstudy_ml = c("Reaction ~ Days + (Days | Subject)", "false"),
    sleepstudy_uncorrelated = c("Reaction ~ Days + (Days || Subject)", "true"),
    sleepstudy_satterthwaite = c("Reaction ~ Days + (Days | Subject)", "true"),
    penicillin_crossed = c("diameter ~ 1 + (1 | plate) + (1 | sample)", "true"),
    pastes_nested = c("strength ~ 1 + (1 | batch/cask)", "true"),
    dyestuff = c("Yield ~ 1 + (1 | Batch)", "true"),
    insteval_crossed = c("y ~ service + (1 | s) + (1 | d) + (1 | dept)", "true")
  )
  ## versions the shared set was made with (shared/README.md)
  vers <- '  "r_versions": {"R": "4.2.2", "lme4": "1.1-31", "lmerTest": "3.1-3"},'
  for (nm in names(cases)) {
    add <- c(sprintf('  "formula": "%s",', cases[[nm]][1]), sprintf('  "reml": %s,', cases[[nm]][2]), vers)
    stopifnot(identical(import_with_lines(nm, add, REF_DIR, shared)$reml, cases[[nm]][2] == "true"))
  }
  for (d in c("sleepstudy", "penicillin", "pastes", "dyestuff")) {
    check_same_as_shared(d, shared)   # the cases above were fitted on the files save_data() wrote
    copy_shared_data(d, shared)
  }
  file.copy(file.path(shared, "data", "insteval.levels.json"), file.path(DATA_DIR, "insteval.levels.json"), overwrite = TRUE, copy.mode = FALSE)
  ## gzip without name/timestamp so the archive is reproducible
  system2("gzip", c("-9", "-n", "-c", shQuote(file.path(shared, "data", "insteval.csv"))),
          stdout = file.path(DATA_DIR, "insteval.csv.gz"))
  cat("imported", length(cases), "shared LMM cases\n")
}
import_shared()
