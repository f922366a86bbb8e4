## Reference fits for tests/test_zi_start.py: zero-inflated and hurdle Poisson / NB2 / NB1
## GLMMs on lme4's grouseticks (tests/data/grouseticks.csv, the data of glmm_reference.R), the
## models whose first stage (lme4's nAGQ = 0, beta inside PIRLS) stalled when the negative (or
## zero) observed information of the zeros was replaced by Fisher weights (ZIP, (1 | LOCATION),
## zi = ~ 1: no convergence in 100 PIRLS iterations).  TICKS ~ YEAR with (1 | LOCATION),
## (1 | BROOD) and both, ziformula = ~ 1 and ~ YEAR, family = poisson, nbinom2, nbinom1 and
## their truncated_ (hurdle) versions.  Stored as in zi_hurdle_reference.R (vcov(fit): the
## inverse Hessian in all fixed parameters; SDs exp(theta); NB2's theta and NB1's phi are
## sigma(fit)).  A case glmmTMB itself does not fit cleanly (convergence code, pdHess FALSE)
## would be stored with "ok": false and without SEs (none is: every case here is ok).
##
## Run from the repository root: Rscript tools/r_reference/zi_start_reference.R  (~15 s)
source("tools/r_reference/common.R")
suppressPackageStartupMessages(library(glmmTMB))
REF_DIR <- "tests/reference/zi_start"
start_script("zi_start_reference.R", c(REF_DIR))
R_VERSIONS <- r_versions(c("glmmTMB", "TMB", "Matrix", "jsonlite"))
read_data("grouseticks")

case <- function(name, formula, zi, family) {
  call_txt <- sprintf("glmmTMB(%s, ziformula = %s, data = grouseticks, family = %s)",
                      formula, zi, family)
  t0 <- proc.time()[["elapsed"]]
  msgs <- character(0)
  fit <- withCallingHandlers(
    glmmTMB(as.formula(formula), ziformula = as.formula(zi), data = grouseticks,
            family = family),
    warning = function(w) { msgs <<- c(msgs, conditionMessage(w)); invokeRestart("muffleWarning") })
  secs <- proc.time()[["elapsed"]] - t0
  ok <- fit$fit$convergence == 0 && isTRUE(fit$sdr$pdHess)
  fe <- fixef(fit)
  V <- if (ok) vcov(fit) else NULL
  out <- list(name = name, r_call = call_txt, data = "grouseticks.csv", formula = formula,
              ziformula = zi, family = family, r_seconds = round(secs, 3), ok = ok,
              r_warnings = msgs, convergence = fit$fit$convergence,
              fixef = as.list(fe$cond), fixef_zi = as.list(fe$zi),
              se = if (ok) as.list(sqrt(diag(V$cond))) else NULL,
              se_zi = if (ok) as.list(sqrt(diag(V$zi))) else NULL,
              re_sd = I(unname(vapply(VarCorr(fit)$cond, function(v) attr(v, "stddev")[[1]], 0))),
              re_names = I(names(VarCorr(fit)$cond)),
              loglik = as.numeric(logLik(fit)), df = attr(logLik(fit), "df"),
              nobs = nobs(fit), max_grad = max(abs(fit$sdr$gradient.fixed)),
              theta = if (grepl("nbinom2", family)) sigma(fit) else NULL,
              phi = if (grepl("nbinom1", family)) sigma(fit) else NULL)
  write_ref(out, name, REF_DIR, R_VERSIONS)
  cat(sprintf("%-28s ok=%s logLik=%.6f\n", name, ok, out$loglik))
  invisible(fit)
}

RES <- c(loc = "TICKS ~ YEAR + (1 | LOCATION)", brood = "TICKS ~ YEAR + (1 | BROOD)",
         both = "TICKS ~ YEAR + (1 | BROOD) + (1 | LOCATION)")
ZIS <- c(int = "~ 1", year = "~ YEAR")
FAMS <- c(zip = "poisson", zinb = "nbinom2", hp = "truncated_poisson", hnb = "truncated_nbinom2",
          zinb1 = "nbinom1", hnb1 = "truncated_nbinom1")
for (f in names(FAMS)) for (r in names(RES)) for (z in names(ZIS))
  case(paste(f, r, z, sep = "_"), RES[[r]], ZIS[[z]], FAMS[[f]])
