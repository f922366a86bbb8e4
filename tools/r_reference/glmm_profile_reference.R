## R reference values for mlmext's GLMM profile likelihood (tests/test_glmm_profile.py):
## lme4's profile() and confint(method = "profile") of glmer fits.
##
## Run from the repository root:   Rscript tools/r_reference/glmm_profile_reference.R
##
## Writes tests/reference/inference/glmm_profile_NAME.json and the simulated data sets
## tests/data/binbound.csv and binsing.csv (+ .levels.json).  Deterministic (set.seed for the
## simulated data; two runs give identical files except r_profile_seconds, the time lme4's
## profile() took).  Takes two to three minutes.
##
## Cases
##   cbpp          cbind(incidence, size - incidence) ~ period + (1 | herd), binomial, Laplace
##   cbpp_agq25    the same with nAGQ = 25
##   grouseticks   TICKS ~ YEAR + cHEIGHT + (1 | LOCATION), Poisson, Laplace
##   grouseticks_nb  the same, negative binomial: lme4 profiles a glmer.nb fit with the NB
##                 theta held at its estimate, i.e. the glmer fit with
##                 family = negative.binomial(theta_hat); theta_hat is found here by a 1-d
##                 search on the tight Laplace deviance (glmer.nb itself fails with
##                 tolPwrss = 1e-12: "pwrssUpdate did not converge")
##   binbound      simulated binary data, y ~ x + (1 | g): the SD estimate is 0.43 but the
##                 deviance at SD = 0 is only 0.85 higher, so the profile never reaches
##                 -1.96 and lme4 reports a lower limit of 0
##   binsing       simulated binary data without a group effect, y ~ x + (1 | g): a singular
##                 fit (SD estimate exactly 0), the profile starts at the bound
##   binslope      y ~ x + (1 + x | g), binomial (tests/data/binslope.csv, written by
##                 glmm_reference.R): two SDs and a correlation
##
## Accuracy settings (recorded in each JSON under "settings")
##   * glmerControl(tolPwrss = 1e-12, optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10)):
##     PIRLS to full precision (lme4's default 1e-7 leaves deviance errors of ~1e-4..1e-3)
##     and a tight bobyqa, which profile() reuses for its inner minimizations.
##   * lme4 1.1-31's profile() does NOT use the fit's tolPwrss: devfun2() takes the deviance
##     function from getME(fit, "devfun"), which calls mkGlmerDevfun() without the fit's
##     control, i.e. with the default tolPwrss = 1e-7 (its deviance at the optimum is then
##     5.7e-4 above the fit's for cbpp, and the limits move by up to 7e-5).  The trace() below
##     makes every mkGlmerDevfun() call use tolPwrss = 1e-12.
##   * "exact_zeta_at_limits": zeta at lme4's interval limits recomputed without the spline:
##     lme4's own devfun2() minimized over the other parameters by nlminb (rel.tol 1e-15,
##     three restarts).  It measures the error of lme4's spline interpolation: |zeta - z| is
##     below 4e-5 in all cases here except binsing (1.8e-3 at the intercept's limits: the
##     profile has a kink where the SD leaves 0, which the spline smooths over), i.e. the
##     limits are accurate to about 4e-5 * (profile standard error).
##
## Packages: lme4, MASS (negative.binomial), jsonlite.

suppressPackageStartupMessages({
  library(lme4)
  library(MASS)
})

## save_data(), read_data(), capture_conditions(), ci_rows(), profile_points(), ... (DATA_DIR)
source("tools/r_reference/common.R")
REF_DIR <- "tests/reference/inference"
start_script("glmm_profile_reference.R", REF_DIR)

TOL_PWRSS <- 1e-12
CONTROL_TXT <- sprintf("glmerControl(tolPwrss = %g, optimizer = \"bobyqa\", optCtrl = list(rhoend = 1e-10))",
                       TOL_PWRSS)
SETTINGS <- list(
  control = CONTROL_TXT,
  profile_devfun_tolPwrss = TOL_PWRSS,
  profile_devfun_note = paste("lme4 1.1-31's devfun2() rebuilds the deviance with the default",
                              "tolPwrss = 1e-7; mkGlmerDevfun() is traced to use 1e-12"),
  profile_call = "profile(fit, signames = FALSE) (alphamax = 0.01, delta.cutoff = 1/8)",
  exact_zeta = "devfun2() minimized over the other parameters by nlminb(rel.tol = 1e-15), 3 restarts"
)

R_VERSIONS <- r_versions(c("lme4", "Matrix", "MASS", "minqa", "jsonlite"))

## the fix described above: every deviance function lme4 builds uses the tight PIRLS tolerance
invisible(suppressMessages(trace("mkGlmerDevfun", tracer = bquote(control$tolPwrss <- .(TOL_PWRSS)),
                       where = asNamespace("lme4"), print = FALSE)))

## ---- data -------------------------------------------------------------------------------
for (nm in c("cbpp", "grouseticks", "binslope")) read_data(nm)

set.seed(2)        # binbound: SD estimate 0.43, profile lower limit 0 (see the header)
ng <- 15; nper <- 10
g <- factor(sprintf("g%02d", rep(seq_len(ng), each = nper)))
x <- round(rnorm(ng * nper), 3)
b <- rnorm(ng, sd = 0.4)
y <- rbinom(ng * nper, 1, plogis(-0.3 + 0.5 * x + b[as.integer(g)]))
save_data(data.frame(y = y, x = x, g = g), "binbound")

set.seed(5)        # binsing: no group effect, a singular fit (SD exactly 0)
ng <- 12; nper <- 8
g <- factor(sprintf("g%02d", rep(seq_len(ng), each = nper)))
x <- round(rnorm(ng * nper), 3)
y <- rbinom(ng * nper, 1, plogis(0.2 + 0.6 * x))
save_data(data.frame(y = y, x = x, g = g), "binsing")

## ---- helpers ----------------------------------------------------------------------------
## zeta at x for parameter w without lme4's spline: devfun2 minimized over the others
exact_zeta <- function(dd, w, x) {
  opt <- attr(dd, "optimum"); base <- attr(dd, "basedev")
  is_sd <- grepl("^sd_", names(opt)); is_cor <- grepl("^cor_", names(opt))
  nvp <- sum(is_sd | is_cor)
  f <- function(y) { p <- opt; p[w] <- x; p[-w] <- y; tryCatch(dd(p), error = function(e) Inf) }
  lo <- ifelse(is_sd, 0, ifelse(is_cor, -1, -Inf))[-w]
  up <- ifelse(is_cor, 1, Inf)[-w]
  scl <- 1 / c(ifelse(is_cor[seq_len(nvp)], 0.5, pmax(0.1, opt[seq_len(nvp)])),
               attr(dd, "stderr"))[-w]                         # parameter scales
  best <- NULL; st <- opt[-w]
  for (k in 1:3) {
    o <- nlminb(st, f, lower = lo, upper = up, scale = scl,
                control = list(rel.tol = 1e-15, x.tol = 1e-12, eval.max = 5000, iter.max = 2000))
    if (is.null(best) || o$objective < best$objective) best <- o
    st <- best$par
  }
  unname(sign(x - opt[w]) * sqrt(max(0, best$objective - base)))
}

profile_case <- function(name, call, formula, data, family, nagq = 1L, extra = list()) {
  fit <- eval(parse(text = call))
  warns <- capture_conditions({
    secs <- system.time(pr <- profile(fit, signames = FALSE))[["elapsed"]]
    ci <- confint(pr)
    ci90 <- confint(pr, level = 0.90)
  }, messages = FALSE)$warnings
  dd <- lme4:::devfun2(fit, useSc = FALSE, signames = FALSE)
  opt <- attr(dd, "optimum")
  stopifnot(abs(dd(opt) - attr(dd, "basedev")) < 1e-6)      # the tight deviance is in use
  ez <- lapply(seq_len(nrow(ci)), function(w) vapply(1:2, function(k) exact_zeta(dd, w, ci[w, k]), 0))
  names(ez) <- rownames(ci)
  err <- max(abs(abs(unlist(ez)) - qnorm(0.975))[as.vector(t(ci)) != 0])
  cat(sprintf("%-16s profile %5.1f s; max |exact zeta - z| at the limits (bounds excluded) %.2g\n",
              name, secs, err))
  out <- c(list(
    name = name, r_call = call, data = paste0(data, ".csv"), formula = formula, family = family,
    nagq = nagq, settings = SETTINGS,
    fit = list(theta = unname(getME(fit, "theta")), fixef = as.list(fixef(fit)),
               loglik = as.numeric(logLik(fit)), sd = unname(opt[grepl("^sd_", names(opt))])),
    confint = ci_rows(ci), confint90 = ci_rows(ci90),
    rownames = rownames(ci),
    oldnames = c(sprintf(".sig%02d", seq_len(sum(grepl("^(sd|cor)_", rownames(ci))))),
                 rownames(ci)[!grepl("^(sd|cor)_", rownames(ci))]),
    exact_zeta_at_limits = ez, profile = profile_points(pr),
    r_profile_seconds = secs, warnings = unique(warns)), extra, list(r_versions = R_VERSIONS))
  write_ref(out, paste0("glmm_profile_", name), REF_DIR)
  invisible(out)
}

## ---- cases ------------------------------------------------------------------------------
CBPP <- "cbind(incidence, size - incidence) ~ period + (1 | herd)"
GT <- "TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)"
glmer_call <- function(formula, data, family, nagq = 1L)
  sprintf("glmer(%s, data = %s, family = %s, nAGQ = %d, control = %s)", formula, data, family,
          as.integer(nagq), CONTROL_TXT)

profile_case("cbpp", glmer_call(CBPP, "cbpp", "binomial"), CBPP, "cbpp", "binomial")
profile_case("cbpp_agq25", glmer_call(CBPP, "cbpp", "binomial", 25), CBPP, "cbpp", "binomial", nagq = 25L)
profile_case("grouseticks", glmer_call(GT, "grouseticks", "poisson"), GT, "grouseticks", "poisson")
profile_case("binbound", glmer_call("y ~ x + (1 | g)", "binbound", "binomial"), "y ~ x + (1 | g)",
             "binbound", "binomial")
profile_case("binsing", glmer_call("y ~ x + (1 | g)", "binsing", "binomial"), "y ~ x + (1 | g)",
             "binsing", "binomial", extra = list(singular = TRUE))
profile_case("binslope", glmer_call("y ~ x + (1 + x | g)", "binslope", "binomial"),
             "y ~ x + (1 + x | g)", "binslope", "binomial")

## negative binomial: theta_hat on the tight Laplace deviance (glmer.nb's own search, run with
## the default PIRLS tolerance, is recorded for comparison)
nb_default <- glmer.nb(as.formula(GT), data = grouseticks)
nb_dev <- function(lt) {
  f <- eval(parse(text = glmer_call(GT, "grouseticks", sprintf("negative.binomial(%.17g)", exp(lt)))))
  -2 * as.numeric(logLik(f))
}
lt0 <- log(getME(nb_default, "glmer.nb.theta"))
nb_opt <- optimize(nb_dev, c(lt0 - 0.05, lt0 + 0.05), tol = 1e-9)
nb_theta <- exp(nb_opt$minimum)
profile_case("grouseticks_nb",
             glmer_call(GT, "grouseticks", sprintf("negative.binomial(%.17g)", nb_theta)), GT,
             "grouseticks", "negbin",
             extra = list(nb_theta = nb_theta, nb_alpha = 1 / nb_theta,
                          nb_theta_glmer_nb_default = getME(nb_default, "glmer.nb.theta"),
                          nb_note = paste("lme4 profiles a glmer.nb fit with theta held at its",
                                          "estimate: this is that profile, with theta from the",
                                          "tight deviance")))
