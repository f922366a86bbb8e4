## geepack reference values for the mlmext GEE / QIC tests (tests/test_gee.py).
##
## Run from the repository root:   Rscript tools/r_reference/gee_reference.R [CASE ...]
## (with case names, only those cases are refitted and written; the data files are always written).
##
## Writes
##   tests/data/NAME.csv, tests/data/NAME.levels.json   (ohio, respiratory, epil, cbpp_gee, and the
##                                                      simulated panels gee_panel, gee_panel_pois;
##                                                      dietox is the copy of ../shared/data and only read)
##   tests/reference/gee_CASE.json                      (one geeglm fit per working correlation)
##
## Every model is fitted on the data as read back from the CSV the Python side reads.
## Fits use a tight convergence control, geese.control(epsilon = 1e-10, maxit = 200), so that the
## stored values are those of the converged estimating equations and not of geepack's default
## stopping rule (epsilon = 1e-4), except the case dietox_gaussian_default, which repeats
## ../shared/reference/dietox_gee_qic.json (default control: its unstructured fit does not
## converge and stops at geepack's 25th iterate).
##
## Besides geepack's own QIC() output (QIC, QICu, CIC, "Quasi Lik"), each structure stores
## QuasiLik_pan / QIC_pan / QICu_pan: Pan's (2001) quasi-likelihood computed here from geepack's
## fitted values and prior weights.  They equal geepack's values except where geepack's QIC()
## departs from Pan: it ignores prior weights in the quasi-likelihood (binomial proportions with
## weights) and uses -y/(mu - log(mu)) instead of -y/mu - log(mu) for the Gamma family.
## The CIC (the trace term) is geepack's in every case.

suppressPackageStartupMessages({
  library(geepack)
  library(MASS)       # epil; also makes QIC() use MASS::ginv as geepack does when MASS is loaded
})

## save_data(), read_data(), run_call(), write_ref(), ...
source("tools/r_reference/common.R")
REF_DIR <- "tests/reference"
start_script("gee_reference.R", c(DATA_DIR, REF_DIR))
R_VERSIONS <- r_versions(c("geepack", "MASS", "jsonlite"))
CONTROL <- geese.control(epsilon = 1e-10, maxit = 200)

## ---- datasets ---------------------------------------------------------------------------
## save_data() writes NAME.csv (+ NAME.levels.json), reads it back and assigns it to the global
## NAME used in r_call (common.R).
## geepack needs the rows of a cluster to be contiguous and in time order.
data(ohio, package = "geepack")
save_data(ohio[order(ohio$id, ohio$age), ], "ohio")

data(respiratory, package = "geepack")
respiratory$cid <- respiratory$center * 1000L + respiratory$id   # id repeats across the two centres
save_data(respiratory[order(respiratory$cid, respiratory$visit), ], "respiratory")

data(epil, package = "MASS")
save_data(epil[order(epil$subject, epil$period), ], "epil")

data(cbpp, package = "lme4")
cbpp$herd_id <- as.integer(as.character(cbpp$herd))
cbpp$time <- as.integer(as.character(cbpp$period))
save_data(cbpp[order(cbpp$herd_id, cbpp$time), c("herd_id", "period", "time", "incidence", "size")], "cbpp_gee")

## Two simulated balanced panels, 48 clusters x 7 years, for convergence that must not depend on
## units (issue 13).  gee_panel: Gaussian, response about 2e-4 and a covariate about 1e-3, cluster
## effects plus AR(1) errors (exchangeable correlation about 0.86).  gee_panel_pois: Poisson counts
## in the tens of thousands over the calendar years 2001-2007, with a covariate in units of 1e-10
## (its coefficient is about 2e9): absolute stopping rules (statsmodels' score norm, geepack's
## epsilon) cannot tell rounding noise from movement there.  Each is also fitted with columns
## multiplied by a power of ten (the cases *_1e4, *_1e10; `data_scale` in their files).
## Values are stored with 7 significant digits (rnd() would round them away).
set.seed(20250613)
G <- 48; TT <- 7
pid <- rep(seq_len(G), each = TT); year <- rep(seq_len(TT), G)
b <- rnorm(G, 0, 2e-5)[pid]
e <- as.vector(replicate(G, as.numeric(arima.sim(list(ar = 0.5), TT, sd = 1e-5 * sqrt(0.75)))))
x <- rnorm(G, 1e-3, 5e-4)[pid] + rnorm(G * TT, 0, 3e-4)
y <- 2e-4 + 5e-6 * year + 0.02 * x + b + e
save_data(data.frame(id = pid, year = year, x = signif(x, 7), y = signif(y, 7)), "gee_panel")

set.seed(12)   # a draw where gee_select's former rule flagged the exchangeable fit
z <- rnorm(G)[pid] + rnorm(G * TT)
cnt <- rpois(G * TT, exp(9 + 0.3 * year + 0.2 * z + rnorm(G, 0, 0.3)[pid]))
save_data(data.frame(id = pid, year = year + 2000L, x = signif(z * 1e-10, 7), y = cnt), "gee_panel_pois")

## A stored panel with some columns multiplied by constants, e.g. rescaled("gee_panel", c(y = 1e4)).
rescaled <- function(name, by) {
  df <- get(name, envir = globalenv())
  for (col in names(by)) df[[col]] <- df[[col]] * by[[col]]
  df
}
gee_panel_1e4 <- rescaled("gee_panel", c(y = 1e4, x = 1e4))
gee_panel_pois_1e10 <- rescaled("gee_panel_pois", c(x = 1e10))

read_data("dietox")                               # tests/data/dietox.csv, copied from ../shared/data
stopifnot(!is.unsorted(as.integer(dietox$Pig)))   # sorted by pig, and by Time within pig

## ---- Pan's quasi-likelihood -------------------------------------------------------------
pan_quasi <- function(fit) {
  y <- fit$y; mu <- fitted(fit); w <- fit$prior.weights
  switch(family(fit)$family,
         gaussian = -sum(w * (y - mu)^2) / 2,
         binomial = sum(w * (y * log(mu / (1 - mu)) + log(1 - mu))),
         poisson = sum(w * (y * log(mu) - mu)),
         Gamma = sum(w * (-y / mu - log(mu))))
}

## ---- cases ------------------------------------------------------------------------------
CS4 <- c("independence", "exchangeable", "ar1", "unstructured")
cases <- list(
  list(name = "dietox_gaussian", data = "dietox", call = "Weight ~ Time + Cu, id = Pig, family = gaussian",
       groups = "Pig", time = "Time", family = "gaussian", corstrs = CS4),
  list(name = "dietox_gaussian_default", data = "dietox", call = "Weight ~ Time + Cu, id = Pig, family = gaussian",
       groups = "Pig", time = "Time", family = "gaussian", corstrs = CS4, control = "default"),
  list(name = "dietox_gamma", data = "dietox", call = "Feed ~ Time + Cu, id = Pig, family = Gamma(link = 'log')",
       groups = "Pig", time = "Time", family = "Gamma(log)", corstrs = CS4[1:3]),
  list(name = "ohio", data = "ohio", call = "resp ~ age + smoke, id = id, family = binomial",
       groups = "id", time = "age", family = "binomial", corstrs = CS4),
  list(name = "ohio_weighted", data = "ohio",
       call = "resp ~ age + smoke, id = id, weights = 1 + smoke, family = binomial",
       groups = "id", time = "age", family = "binomial", corstrs = CS4[1:3]),
  list(name = "respiratory", data = "respiratory",
       call = "outcome ~ treat + sex + age + baseline, id = cid, family = binomial",
       groups = "cid", time = "visit", family = "binomial", corstrs = CS4),
  list(name = "epil", data = "epil", call = "y ~ lbase * trt + lage + V4, id = subject, family = poisson",
       groups = "subject", time = "period", family = "poisson", corstrs = CS4),
  list(name = "cbpp_weighted", data = "cbpp_gee",
       call = "incidence / size ~ period, weights = size, id = herd_id, family = binomial",
       groups = "herd_id", time = NULL, family = "binomial", corstrs = CS4[1]),
  list(name = "panel", data = "gee_panel", call = "y ~ year + x, id = id, family = gaussian",
       groups = "id", time = "year", family = "gaussian", corstrs = CS4[1:3]),
  list(name = "panel_1e4", data = "gee_panel_1e4", csv = "gee_panel", scale = list(y = 1e4, x = 1e4),
       call = "y ~ year + x, id = id, family = gaussian",
       groups = "id", time = "year", family = "gaussian", corstrs = CS4[1:3]),
  list(name = "panel_pois", data = "gee_panel_pois", call = "y ~ year + x, id = id, family = poisson",
       groups = "id", time = "year", family = "poisson", corstrs = CS4[1:3]),
  list(name = "panel_pois_1e10", data = "gee_panel_pois_1e10", csv = "gee_panel_pois", scale = list(x = 1e10),
       call = "y ~ year + x, id = id, family = poisson",
       groups = "id", time = "year", family = "poisson", corstrs = CS4[1:3])
)

## Pearson scale of a fit with the number of rows as divisor: sum(w r^2) / N.
pearson_rows <- function(fit) {
  mu <- fitted(fit)
  sum(fit$prior.weights * (fit$y - mu)^2 / family(fit)$variance(mu)) / length(fit$y)
}

fit_case <- function(case) {
  default_control <- identical(case$control, "default")
  out <- list(name = paste0("gee_", case$name), data = paste0(if (is.null(case$csv)) case$data else case$csv, ".csv"))
  if (!is.null(case$scale))            # fitted to the CSV's data with columns multiplied by data_scale
    out <- c(out, list(data_scale = case$scale,
                       data_note = sprintf("%s <- rescaled(\"%s\", c(%s))", case$data, case$csv,
                                           paste(names(case$scale), case$scale, sep = " = ", collapse = ", "))))
  out <- c(out, list(
              r_call = sprintf("geeglm(%s, data = %s, corstr = <each>%s); QIC()", case$call, case$data,
                               if (default_control) "" else ", control = geese.control(epsilon = 1e-10, maxit = 200)"),
              groups = case$groups, time = case$time, family = case$family,
              r_versions = R_VERSIONS, structures = list()))
  for (cs in case$corstrs) {
    txt <- sprintf("geeglm(%s, data = %s, corstr = '%s'%s)", case$call, case$data, cs,
                   if (default_control) "" else ", control = CONTROL")
    res <- run_call(txt)
    fit <- res$fit
    secs <- res$seconds
    q <- QIC(fit)
    qp <- pan_quasi(fit)
    g <- fit$geese
    if (cs == "independence") {   # the fit QIC() takes Omega_I from: its scale, and sum(w r^2) / N
      out$indep_scale = unname(g$gamma)
      out$indep_pearson_rows = pearson_rows(fit)
    }
    out$structures[[cs]] <- list(
      coef = as.list(coef(fit)),
      robust_se = sqrt(diag(g$vbeta)),
      naive_se = sqrt(diag(g$vbeta.naiv)),
      alpha = if (length(g$alpha)) as.list(g$alpha) else list(),
      scale = unname(g$gamma),
      QIC = unname(q["QIC"]), QICu = unname(q["QICu"]), CIC = unname(q["CIC"]),
      QuasiLik = unname(q["Quasi Lik"]), params = unname(q["params"]),
      QuasiLik_pan = qp, QIC_pan = -2 * qp + 2 * unname(q["CIC"]), QICu_pan = -2 * qp + 2 * unname(q["params"]),
      nobs = length(fit$y), n_clusters = length(unique(fit$id)),
      converged = g$error == 0, r_seconds = secs)
  }
  write_ref(out, paste0("gee_", case$name), REF_DIR)
  cat(sprintf("%-16s %s\n", case$name,
              paste(sprintf("%s QIC=%.4f CIC=%.4f", names(out$structures),
                            vapply(out$structures, `[[`, 0, "QIC_pan"),
                            vapply(out$structures, `[[`, 0, "CIC")), collapse = "; ")))
}

only <- commandArgs(trailingOnly = TRUE)
if (length(only)) {
  stopifnot(all(only %in% vapply(cases, `[[`, "", "name")))
  cases <- Filter(function(case) case$name %in% only, cases)
}
invisible(lapply(cases, fit_case))
