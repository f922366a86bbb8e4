## lme4 at tight tolerances for the GLMM standard errors (issue 19, part 4).
##
## Run from the repository root:   Rscript tools/r_reference/glmm_hessian_reference.R
##
## For every lme4 case of tests/reference/glmm whose model is a glmer fit (not glmer.nb, not
## glmmTMB), the same call is refitted with
##     glmerControl(tolPwrss = 1e-12, optimizer = "bobyqa",
##                  optCtrl = list(rhoend = 1e-10, maxfun = 1e5))
## so that the optimum is reached to ~1e-10 in (theta, beta) and the Laplace / AGQ deviance is
## exact (PIRLS to 1e-12).  lme4 then computes its Hessian by central second differences of the
## deviance (deriv12, steps 1e-4) at that optimum; vcov() inverts it ("se").  At steps of 1e-4
## the deviance's own rounding (~1e-11 relative) is amplified by 1/h^2: lme4's SEs carry errors
## of up to ~2e-4 relative (VerbAgg: deriv12 with steps 1e-3 or 3e-3 and numDeriv agree with
## each other to ~5e-6 and differ from deriv12 at 1e-4 by 2.2e-4 for the intercept).  So each
## case also stores "se_numderiv": the same deviance function (devFunOnly = TRUE, in
## (theta, beta)) differentiated by numDeriv::hessian (Richardson extrapolation) at the same
## optimum, and "se_delta_1e-3", "se_delta_3e-3": lme4's deriv12 with steps 1e-3 and 3e-3
## (truncation error O(h^2) ~ 1e-6 relative, rounding error 100x below that of steps 1e-4).
## numDeriv's Richardson steps are relative to each parameter (d = 1e-4, halved 3 times), so
## they are tiny for fixed effects near 0 and its Hessian is then noisy (pois_offset: 2.7e-3).
## Each case writes tests/reference/glmm_hessian/NAME.json with fixef, se, the three other
## SEs, theta, loglik, the call, its warnings, and lme4's Hessian (derivs$Hessian).
## The data are read from tests/data as written by glmm_reference.R / glmm_optimum_reference.R.

suppressPackageStartupMessages(library(lme4))
source("tools/r_reference/common.R")
REF_DIR <- "tests/reference/glmm_hessian"
start_script("glmm_hessian_reference.R", REF_DIR)
VERSIONS <- r_versions(c("lme4", "minqa", "numDeriv", "Matrix", "jsonlite"))
CTRL <- "glmerControl(tolPwrss = 1e-12, optimizer = \"bobyqa\", optCtrl = list(rhoend = 1e-10, maxfun = 1e5))"

read_any <- function(name) {          # NAME.csv or NAME.csv.gz, factors restored (read_data)
  gz <- file.path(DATA_DIR, paste0(name, ".csv.gz"))
  if (file.exists(gz)) {
    tmp <- tempfile(); dir.create(tmp)
    con <- gzfile(gz)
    writeLines(readLines(con), file.path(tmp, paste0(name, ".csv")))
    close(con)
    file.copy(file.path(DATA_DIR, paste0(name, ".levels.json")), tmp)
    return(read_data(name, dir = tmp))
  }
  read_data(name)
}

for (f in sort(list.files("tests/reference/glmm", pattern = "\\.json$", full.names = TRUE))) {
  ref <- fromJSON(f, simplifyVector = FALSE)
  name <- sub("\\.json$", "", basename(f))
  if (!(ref$family %in% c("binomial", "poisson"))) next
  call0 <- if (!is.null(ref$lme4_tight)) ref$lme4_tight$r_call else ref$r_call
  call0 <- sub("data = transform\\(gt,.*\\)\\)$", "data = grouseticks)", call0)
  call0 <- sub(",? *control = glmerControl\\(tolPwrss = 1e-12\\)", "", call0)
  call_txt <- sub("\\)$", sprintf(", control = %s)", CTRL), call0)
  read_any(sub("\\.csv(\\.gz)?$", "", ref$data))
  res <- run_call(call_txt)
  fit <- res$fit
  H <- fit@optinfo$derivs$Hessian
  pars <- c(getME(fit, "theta"), fixef(fit))
  devfun <- update(fit, devFunOnly = TRUE)
  if (ref$nagq == 1) stopifnot(abs(devfun(pars) + 2 * as.numeric(logLik(fit))) < 1e-6)
  HN <- numDeriv::hessian(devfun, pars)
  se_of <- function(H) as.list(setNames(sqrt(diag(2 * solve(H)))[-seq_along(getME(fit, "theta"))],
                                        names(fixef(fit))))
  se_nd <- se_of(HN)
  se_d <- lapply(c(1e-3, 3e-3), function(d) se_of(lme4:::deriv12(devfun, pars, delta = d)$Hessian))
  out <- c(list(name = name, r_call = call_txt, formula = ref$formula, family = ref$family,
                link = family(fit)$link, nagq = ref$nagq, data = ref$data,
                warnings = res$warnings, messages = res$messages,
                feval = fit@optinfo$feval, optimizer_message = fit@optinfo$message),
           lme4_estimates(fit, c("fixef", "se", "theta", "loglik")),
           list(se_numderiv = se_nd, "se_delta_1e-3" = se_d[[1]], "se_delta_3e-3" = se_d[[2]]),
           list(hessian = if (is.null(H)) NULL else unname(lapply(seq_len(nrow(H)), function(i) H[i, ])),
                r_versions = VERSIONS))
  write_ref(out, name, REF_DIR)
  cat(sprintf("%-20s logLik %.8f  (stored main %.8f)\n", name, as.numeric(logLik(fit)), ref$loglik))
}
