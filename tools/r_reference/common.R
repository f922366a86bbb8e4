## Helpers shared by the reference scripts. Each script sources this file from the repository
## root, which is where the scripts must run: source("tools/r_reference/common.R").
suppressPackageStartupMessages(library(jsonlite))

DATA_DIR <- "tests/data"   # datasets: NAME.csv (or NAME.csv.gz) and NAME.levels.json

## ---- setup ------------------------------------------------------------------------------------
## Stop unless run from the repository root, and create the output directories `dirs`.
start_script <- function(script, dirs = character(0)) {
  stopifnot(file.exists(file.path("tools/r_reference", script)))
  for (d in dirs) dir.create(d, recursive = TRUE, showWarnings = FALSE)
}

## The R version and the versions of `pkgs`, for the files' "r_versions" key (in this order).
r_versions <- function(pkgs) {
  c(list(R = paste(R.version$major, R.version$minor, sep = ".")),
    setNames(lapply(pkgs, function(p) packageDescription(p)$Version), pkgs))
}

## ---- output -----------------------------------------------------------------------------------
## JSON with full precision (digits = NA); NULL and NA become null.
write_json_file <- function(x, path, auto_unbox = TRUE) {
  txt <- toJSON(x, digits = NA, auto_unbox = auto_unbox, pretty = TRUE, null = "null", na = "null")
  writeLines(txt, path, useBytes = TRUE)
}

## One reference case: DIR/NAME.json. `versions`, if given, is appended as "r_versions".
write_ref <- function(x, name, dir, versions = NULL) {
  if (!is.null(versions)) x$r_versions <- versions
  write_json_file(x, file.path(dir, paste0(name, ".json")))
}

## ---- datasets ---------------------------------------------------------------------------------
rnd <- function(x) round(x, 6)   # simulated values are stored with 6 decimals

## Read DIR/NAME.csv, restore the factor columns listed in NAME.levels.json (level order and
## orderedness), assign the data frame to the global variable NAME (the name the r_call strings
## use) and return it.
read_data <- function(name, dir = DATA_DIR) {
  df <- read.csv(file.path(dir, paste0(name, ".csv")), stringsAsFactors = FALSE)
  lvf <- file.path(dir, paste0(name, ".levels.json"))
  if (file.exists(lvf)) {
    lv <- fromJSON(lvf)
    for (col in names(lv))
      df[[col]] <- factor(as.character(df[[col]]), levels = as.character(lv[[col]]$levels),
                          ordered = isTRUE(lv[[col]]$ordered[1]))
  }
  assign(name, df, envir = globalenv())
  invisible(df)
}

## Write DATA_DIR/NAME.csv and, if df has factor columns, NAME.levels.json
## ({"col": {"levels": [...], "ordered": [false]}}); then read the CSV back with read_data(), so
## that every model is fitted on exactly the data the Python side reads. gz = TRUE replaces the
## CSV by NAME.csv.gz (gzip -9 -n: no name or time stamp, so the archive is reproducible).
save_data <- function(df, name, gz = FALSE) {
  df <- as.data.frame(df)
  csv <- file.path(DATA_DIR, paste0(name, ".csv"))
  write.csv(df, csv, row.names = FALSE)
  facs <- names(df)[vapply(df, is.factor, logical(1))]
  lv <- lapply(facs, function(col) list(levels = levels(df[[col]]), ordered = is.ordered(df[[col]])))
  names(lv) <- facs
  if (length(facs)) write_json_file(lv, file.path(DATA_DIR, paste0(name, ".levels.json")), auto_unbox = FALSE)
  back <- read_data(name)
  stopifnot(identical(dim(back), dim(df)))
  if (gz) system2("gzip", c("-9", "-n", "-f", csv))
  invisible(back)
}

## ---- the shared development set (../shared; env MLMEXT_SHARED overrides) ----------------------
shared_dir <- function() Sys.getenv("MLMEXT_SHARED", "../shared")

## Stop unless DATA_DIR/NAME.csv and NAME.levels.json (those present here) equal the shared copies:
## the cases were fitted on the files written by save_data().
check_same_as_shared <- function(name, shared = shared_dir()) {
  for (ext in c(".csv", ".levels.json")) {
    mine <- file.path(DATA_DIR, paste0(name, ext))
    if (file.exists(mine) && !identical(readLines(mine), readLines(file.path(shared, "data", paste0(name, ext)))))
      stop(mine, " differs from the shared copy")
  }
}

## Copy shared/data/NAME.csv and NAME.levels.json (those that exist) into DATA_DIR, mode 644.
copy_shared_data <- function(name, shared = shared_dir()) {
  for (ext in c(".csv", ".levels.json")) {
    src <- file.path(shared, "data", paste0(name, ext))
    dst <- file.path(DATA_DIR, paste0(name, ext))
    if (!file.exists(src)) next
    if (file.exists(dst)) Sys.chmod(dst, "644")
    file.copy(src, dst, overwrite = TRUE, copy.mode = FALSE)
    Sys.chmod(dst, "644")
  }
}

## Import a shared case unchanged except for the lines `add` (already formatted JSON members)
## inserted after its "data" line: a text-level edit, so every stored value stays byte-identical.
import_with_lines <- function(name, add, dir, shared = shared_dir()) {
  src <- readLines(file.path(shared, "reference", paste0(name, ".json")))
  i <- grep('^  "data": ', src)
  stopifnot(length(i) == 1)
  dst <- file.path(dir, paste0(name, ".json"))
  writeLines(c(src[1:i], add, src[-(1:i)]), dst)
  invisible(fromJSON(dst))   # read back: the result must still be valid JSON
}

## ---- running R calls --------------------------------------------------------------------------
## Evaluate expr (in the caller's environment) and time it, collecting and muffling its warnings
## and, if `messages`, its messages. Returns list(value, warnings, messages, seconds).
capture_conditions <- function(expr, messages = TRUE) {
  warns <- character(0); msgs <- character(0)
  t <- system.time(value <- withCallingHandlers(expr,
    warning = function(w) { warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning") },
    message = function(m) if (messages) { msgs <<- c(msgs, trimws(conditionMessage(m))); invokeRestart("muffleMessage") }))
  list(value = value, warnings = warns, messages = msgs, seconds = t[["elapsed"]])
}

## Evaluate the R call `call_txt` (a string, as stored in "r_call") in the global environment,
## where the datasets are: list(fit, warnings, messages, seconds).
run_call <- function(call_txt) {
  res <- capture_conditions(eval(parse(text = call_txt), envir = globalenv()))
  c(list(fit = res$value), res[-1])
}

## ---- lme4 results -----------------------------------------------------------------------------
## Standard errors of the fixed effects, named like fixef().
se_list <- function(fit) as.list(setNames(sqrt(diag(as.matrix(vcov(fit)))), names(fixef(fit))))

## Rows of as.data.frame(VarCorr(fit)): grp, var1, var2 ("" for NA), vcov, sdcor; SDs first.
varcorr_rows <- function(fit) {
  vc <- as.data.frame(VarCorr(fit), order = "cov.last")
  lapply(seq_len(nrow(vc)), function(i) list(
    grp = as.character(vc$grp[i]),
    var1 = ifelse(is.na(vc$var1[i]), "", as.character(vc$var1[i])),
    var2 = ifelse(is.na(vc$var2[i]), "", as.character(vc$var2[i])),
    vcov = vc$vcov[i], sdcor = vc$sdcor[i]))
}

## The estimates stored for every lme4 fit, in the files' key order (`keys` selects some).
lme4_estimates <- function(fit, keys = NULL) {
  th <- getME(fit, "theta")
  out <- list(fixef = as.list(fixef(fit)), se = se_list(fit), varcorr = varcorr_rows(fit),
              theta = I(unname(th)), theta_names = I(names(th)), loglik = as.numeric(logLik(fit)))
  if (is.null(keys)) out else out[keys]
}

## The rows of one grouping factor's ranef() data frame: {term: value, ..., ".level": level}.
ranef_rows <- function(df) {
  lapply(seq_len(nrow(df)), function(i) {
    row <- as.list(vapply(names(df), function(nm) df[[nm]][i], numeric(1)))
    row[[".level"]] <- rownames(df)[i]
    row
  })
}

## ranef(fit, condVar = TRUE) as list(ranef = rows per grouping factor, <cond_key> = cond_of(df)
## per grouping factor), where df is that factor's ranef() data frame.
ranef_with <- function(fit, cond_key, cond_of) {
  re <- ranef(fit, condVar = TRUE)
  out <- list(ranef = list(), cond = list())
  for (g in names(re)) {
    out$ranef[[g]] <- ranef_rows(re[[g]])
    out$cond[[g]] <- cond_of(re[[g]])
  }
  setNames(out, c("ranef", cond_key))
}

## lme4: condsd = per factor a list of term columns of conditional SDs, the square roots of the
## diagonals of the "postVar" arrays.
lme4_ranef <- function(fit) {
  ranef_with(fit, "condsd", function(df) {
    pv <- attr(df, "postVar")
    if (!is.list(pv)) pv <- list(pv)   # several terms on one factor: one array per term
    sds <- list()
    for (a in pv) for (k in seq_len(dim(a)[1])) sds[[length(sds) + 1]] <- sqrt(a[k, k, ])
    stopifnot(length(sds) == ncol(df))
    sds
  })
}

## ---- profiles and intervals -------------------------------------------------------------------
## A confint() matrix as {parameter: [lower, upper]}: in the matrix's row order, or with
## sorted = TRUE in the sorted order of the row names (split()'s default).
ci_rows <- function(ci, sorted = FALSE) {
  f <- if (sorted) rownames(ci) else factor(rownames(ci), levels = rownames(ci))
  lapply(split(as.data.frame(ci), f), function(r) unname(unlist(r)))
}

## lme4's profile points: {parameter: {value: [...], zeta: [...]}}.
profile_points <- function(pr) {
  lapply(split(as.data.frame(pr), pr$.par), function(d) {
    p <- as.character(d$.par[1])
    list(value = d[[p]], zeta = d$.zeta)
  })
}
