## ordinal::clmm reference fits for the mlmext cumulative link mixed model tests.
##
## Run from the repository root:   Rscript tools/r_reference/clmm_reference.R
##
## Writes
##   tests/data/NAME.csv, tests/data/NAME.levels.json   (datasets; factor level order as in R)
##   tests/reference/clmm/NAME.json                     (one clmm fit per file)
## and, when ../shared/reference is present (env MLMEXT_SHARED overrides the location),
## imports the two clmm cases of the shared development set (wine_clmm_laplace,
## wine_clmm_agq10) unchanged except for added keys, after checking that the wine data written
## here are byte-identical to the shared ones (see import_shared() at the end).
##
## Every model is fitted on the data as read back from the CSV the Python side reads.
## Simulated data use a fixed seed. Two runs give identical files except for r_seconds.

suppressPackageStartupMessages({
  library(ordinal)
})

## save_data(), run_call(), ranef_with(), write_ref(), import_with_lines(), ...
source("tools/r_reference/common.R")
REF_DIR <- "tests/reference/clmm"
start_script("clmm_reference.R", c(DATA_DIR, REF_DIR))
R_VERSIONS <- r_versions(c("ordinal", "ucminf", "Matrix", "jsonlite"))

## ---- one reference case -------------------------------------------------------------------
## formula: the string the Python side passes (same syntax in R); link, threshold, nAGQ as in
## clmm(); weights: a column name.  r_seconds is the best of `reps` timings of the whole call.
## r_link: the link argument given to R when it differs from the model R computes (`link`);
## control: a clmm.control() call as a string.
ref_case <- function(name, formula, data, link = "logit", threshold = "flexible", nAGQ = 1L,
                     weights = NULL, reps = 3L, note = NULL, r_link = link, control = NULL) {
  args <- c(sprintf("data = %s", data))
  if (!is.null(weights)) args <- c(args, sprintf("weights = %s", weights))
  if (r_link != "logit") args <- c(args, sprintf('link = "%s"', r_link))
  if (threshold != "flexible") args <- c(args, sprintf('threshold = "%s"', threshold))
  if (nAGQ != 1L) args <- c(args, sprintf("nAGQ = %d", nAGQ))
  if (!is.null(control)) args <- c(args, sprintf("control = %s", control))
  r_call <- sprintf("clmm(%s, %s)", formula, paste(args, collapse = ", "))
  warns <- character(0)
  times <- numeric(0)
  for (r in seq_len(reps)) {
    res <- run_call(r_call)
    fit <- res$fit
    warns <- unique(c(warns, res$warnings))
    times <- c(times, res$seconds)
  }
  smry <- summary(fit)
  vc <- vcov(fit)
  se <- sqrt(diag(vc))
  cf <- coef(fit)
  nalpha <- fit$dims$nalpha
  ## variance components in lme4's as.data.frame(VarCorr()) layout
  vcl <- VarCorr(fit)
  vc_rows <- list()
  for (g in names(vcl)) {
    V <- as.matrix(vcl[[g]])
    nm <- colnames(V)
    sds <- sqrt(diag(V))
    for (i in seq_along(nm))
      vc_rows[[length(vc_rows) + 1]] <- list(grp = g, var1 = nm[i], var2 = "", vcov = V[i, i], sdcor = sds[i])
    if (length(nm) > 1) for (j in 1:(length(nm) - 1)) for (i in (j + 1):length(nm))
      vc_rows[[length(vc_rows) + 1]] <- list(grp = g, var1 = nm[j], var2 = nm[i], vcov = V[i, j],
                                             sdcor = V[i, j] / (sds[i] * sds[j]))
  }
  ## ranef and condvar: conditional variances as a list of term columns
  re <- ranef_with(fit, "condvar", function(df) {
    cv <- attr(df, "condVar")
    lapply(seq_len(ncol(cv)), function(k) cv[[k]])
  })
  th <- fit$Theta
  out <- list(
    name = name,
    r_call = r_call,
    data = paste0(data, ".csv"),
    formula = formula,
    link = link,
    threshold = threshold,
    nagq = nAGQ,
    weights = weights,
    r_seconds = min(times),
    r_seconds_all = I(times),
    r_versions = R_VERSIONS,
    warnings = I(warns),
    notes = I(if (is.null(note)) character(0) else note),
    thresholds = as.list(setNames(as.vector(th), colnames(th))),
    alpha = as.list(cf[seq_len(nalpha)]),
    fixef = if (fit$dims$nbeta > 0) as.list(cf[nalpha + seq_len(fit$dims$nbeta)]) else setNames(list(), character(0)),
    se = as.list(se),
    varcorr = vc_rows,
    ST = lapply(fit$ST, function(m) unname(as.matrix(m))),
    loglik = as.numeric(logLik(fit)),
    aic = AIC(fit),
    bic = BIC(fit),
    nobs = nobs(fit),
    edf = fit$edf,
    max_grad = max(abs(fit$gradient)),
    cond_hess = smry$condHess,
    niter = fit$info$niter,
    ranef = re$ranef,
    condvar = re$condvar
  )
  write_ref(out, name, REF_DIR)
  cat(sprintf("%-26s %-50s %-7s %-11s nAGQ=%-2d logLik=%.4f  %.3fs  warnings=%d\n", name, formula, link,
              threshold, nAGQ, out$loglik, min(times), length(warns)))
  invisible(fit)
}

## ---- data ---------------------------------------------------------------------------------
save_data(ordinal::wine, "wine")     # byte-identical to the shared wine.csv (checked in import_shared)
## a weighted copy: deterministic weights 1, 1.5, 2 by bottle
ww <- ordinal::wine
ww$w <- 1 + (as.integer(ww$bottle) %% 3) / 2
save_data(ww, "wine_weighted")
save_data(ordinal::soup[, c("SURENESS", "PROD", "RESP", "DAY")], "soup")

## simulated benchmark-size data: 2,000 rows, 100 groups fully crossed with 20 items,
## 6 categories, random intercepts for g and item and a random slope of x1 within g
set.seed(20240611)
ng <- 100; ni <- 20
d <- expand.grid(item = 1:ni, g = 1:ng)
n <- nrow(d)
b0 <- rnorm(ng, sd = 0.9); b1 <- rnorm(ng, sd = 0.45); ci <- rnorm(ni, sd = 0.5)
d$x1 <- round(rnorm(n), 4)
trt <- ifelse((d$item + d$g) %% 2 == 0, "a", "b")
eta <- 0.7 * d$x1 + 0.6 * (trt == "b") + b0[d$g] + b1[d$g] * d$x1 + ci[d$item]
ys <- eta + rlogis(n)
ordsim <- data.frame(
  y = factor(findInterval(ys, c(-1.6, -0.5, 0.4, 1.3, 2.3)) + 1, levels = 1:6, ordered = TRUE),
  x1 = d$x1,
  trt = factor(trt, levels = c("a", "b")),
  g = factor(paste0("g", d$g), levels = paste0("g", 1:ng)),
  item = factor(paste0("i", d$item), levels = paste0("i", 1:ni)))
save_data(ordsim, "ordsim")

## ---- cases --------------------------------------------------------------------------------
WF <- "rating ~ temp + contact + (1 | judge)"
## The cloglog and loglog links of ordinal 2022.11-16 are swapped in the C code of the
## single-scalar-random-effect path (src/utilityFuns.c: d_pfun link 3 "cloglog" calls
## d_pgumbel, exp(-exp(-x)), the loglog distribution; link 4 calls 1 - exp(-exp(x))), while
## clm() and clmm()'s general R path use cloglog F(x) = 1 - exp(-exp(x)) as documented.
## The check below shows it; the cloglog / loglog Laplace cases therefore use the general
## path (useMatrix = TRUE), and the AGQ case (only available on the C path) is stored as the
## model R actually computes: link = "loglog", fitted with R's link = "cloglog".
swap_ssr <- clmm(rating ~ temp + contact + (1 | judge), data = wine, link = "cloglog")
swap_gen <- clmm(rating ~ temp + contact + (1 | judge), data = wine, link = "loglog",
                 control = clmm.control(useMatrix = TRUE))
stopifnot(abs(logLik(swap_ssr) - logLik(swap_gen)) < 1e-3)
SWAP_NOTE <- paste("ordinal 2022.11-16 computes the loglog model when asked for link = 'cloglog' on its",
                   "single-scalar-random-effect (C) path, which is the only path with nAGQ > 1;",
                   "this case is that model, stored as link = 'loglog'")
ref_case("wine_probit", WF, "wine", link = "probit")
ref_case("wine_loglog_agq12", WF, "wine", link = "loglog", r_link = "cloglog", nAGQ = 12L, note = SWAP_NOTE)
ref_case("wine_cloglog", WF, "wine", link = "cloglog", control = "clmm.control(useMatrix = TRUE)",
         note = "useMatrix = TRUE: clmm's general R path, whose cloglog is 1 - exp(-exp(x)) (see SWAP_NOTE)")
ref_case("wine_loglog", WF, "wine", link = "loglog", control = "clmm.control(useMatrix = TRUE)",
         note = "useMatrix = TRUE: clmm's general R path, whose loglog is exp(-exp(-x))")
ref_case("wine_cauchit", WF, "wine", link = "cauchit")
ref_case("wine_probit_agq20", WF, "wine", link = "probit", nAGQ = 20L)
ref_case("wine_equidistant", WF, "wine", threshold = "equidistant")
ref_case("wine_symmetric", WF, "wine", threshold = "symmetric")
ref_case("wine_interaction", "rating ~ temp * contact + (1 | judge)", "wine")
ref_case("wine_weighted", WF, "wine_weighted", weights = "w")
ref_case("wine_crossed", "rating ~ temp + contact + (1 | judge) + (1 | bottle)", "wine",
         note = "bottle is confounded with temp:contact, so its variance is small")
ref_case("soup_nested", "SURENESS ~ PROD + (1 | RESP) + (1 | RESP:PROD)", "soup", reps = 1L)
ref_case("soup_agq10", "SURENESS ~ PROD + (1 | RESP)", "soup", nAGQ = 10L, reps = 1L)
ref_case("ordsim_laplace", "y ~ x1 + trt + (1 | g)", "ordsim")
ref_case("ordsim_agq10", "y ~ x1 + trt + (1 | g)", "ordsim", nAGQ = 10L)
ref_case("ordsim_crossed", "y ~ x1 + trt + (1 | g) + (1 | item)", "ordsim", reps = 1L)
ref_case("ordsim_slope", "y ~ x1 + trt + (1 + x1 | g)", "ordsim", reps = 1L)

## ---- shared development set ------------------------------------------------------------------
## The two shared clmm cases get "formula", "link", "threshold", "nagq" and "r_versions" after
## their "data" line; every other byte stays.
import_shared <- function(shared = shared_dir()) {
  if (!dir.exists(file.path(shared, "reference"))) {
    cat("shared reference set not found at", shared, "- import skipped\n")
    return(invisible(NULL))
  }
  cases <- list(wine_clmm_laplace = 1L, wine_clmm_agq10 = 10L)
  vers <- '  "r_versions": {"R": "4.2.2", "ordinal": "2022.11-16"},'
  for (nm in names(cases)) {
    add <- c(sprintf('  "formula": "%s",', WF), '  "link": "logit",', '  "threshold": "flexible",',
             sprintf('  "nagq": %d,', cases[[nm]]), vers)
    stopifnot(identical(import_with_lines(nm, add, REF_DIR, shared)$nagq, cases[[nm]]))
  }
  ## every case here was fitted on tests/data/wine.csv written by save_data(): it must equal the shared copy
  check_same_as_shared("wine", shared)
  cat("imported", length(cases), "shared clmm cases\n")
}
import_shared()
