## R reference values for the multilevel R² of tests/test_r2_multilevel.py:
##   * mitml's multilevelR2 (RB1, RB2, SB, MVP), from mitml itself;
##   * the likelihood-ratio R² of MuMIn's r.squaredLR.  MuMIn is not a Debian package (CRAN is
##     not reachable here), so its definition is written out: with lme4's logLik(fit, REML =
##     FALSE) (for a REML fit: the ML deviance at the REML estimates) and MuMIn's null models
##     (null.RE = FALSE: glm(y ~ 1, family); null.RE = TRUE: the same call with the fixed part
##     reduced to 1, REML kept):  R2 = 1 - exp(-2/n (L1 - L0)),  adj = R2 / (1 - exp(2/n L0)).
## Rights & Sterba's r2mlm is not installable either; its test checks a direct computation.
##
## Run from the repository root:   Rscript tools/r_reference/r2_reference.R
##
## Writes tests/reference/r2/NAME.json; uses tests/data/sleepstudy.csv, hsb82.csv, cbpp.csv as
## they are (no random numbers: two runs give the same files).
##
## Packages: lme4, mitml (Debian: r-cran-mitml), jsonlite.

suppressPackageStartupMessages({
  library(lme4)
  library(mitml)
})
source("tools/r_reference/common.R")
REF_DIR <- "tests/reference/r2"
start_script("r2_reference.R", REF_DIR)
R_VERSIONS <- r_versions(c("lme4", "mitml"))

fit_info <- function(m) list(fixef = as.list(fixef(m)), theta = unname(getME(m, "theta")),
                             sigma = sigma(m), loglik = as.numeric(logLik(m)))

## ---- mitml::multilevelR2 -------------------------------------------------------------------------
mitml_case <- function(name, call, data_name) {
  m <- eval(parse(text = call))
  v <- multilevelR2(m)
  write_ref(list(name = name, r_call = call, data = paste0(data_name, ".csv"), fit = fit_info(m),
                 multilevelR2 = as.list(v)), name, REF_DIR, versions = R_VERSIONS)
}
read_data("sleepstudy")
read_data("hsb82")
read_data("cbpp")
mitml_case("mitml_sleepstudy", "lmer(Reaction ~ Days + (Days | Subject), data = sleepstudy)", "sleepstudy")
mitml_case("mitml_hsb82", "lmer(mAch ~ meanses + sector + cses + (cses | school), data = hsb82)", "hsb82")
mitml_case("mitml_hsb82_ml", "lmer(mAch ~ meanses + cses + (1 | school), data = hsb82, REML = FALSE)", "hsb82")
## mitml reads only the first term of the grouping factor: here (1 | school), so the slope
## variance is left out of MVP's denominator
mitml_case("mitml_hsb82_uncorr", "lmer(mAch ~ meanses * cses + (cses || school), data = hsb82)", "hsb82")

## ---- MuMIn's r.squaredLR, written out ------------------------------------------------------------
lr_r2 <- function(L1, L0, n) {
  r2 <- 1 - exp(-2 / n * (L1 - L0))
  list(r2 = r2, adjusted = r2 / (1 - exp(2 / n * L0)), loglik = L1, loglik_null = L0, nobs = n)
}
lr_case <- function(name, call, null_glm, null_re, data_name) {
  m <- eval(parse(text = call)); g0 <- eval(parse(text = null_glm)); m0 <- eval(parse(text = null_re))
  L1 <- as.numeric(logLik(m, REML = FALSE)); n <- nobs(m)
  write_ref(list(name = name, r_call = call, null_glm_call = null_glm, null_re_call = null_re,
                 data = paste0(data_name, ".csv"),
                 fit = list(fixef = as.list(fixef(m)), theta = unname(getME(m, "theta")),
                            loglik = as.numeric(logLik(m))),
                 null_re_fit = list(theta = unname(getME(m0, "theta")), loglik = as.numeric(logLik(m0))),
                 null_glm = lr_r2(L1, as.numeric(logLik(g0)), n),
                 null_re = lr_r2(L1, as.numeric(logLik(m0, REML = FALSE)), n)),
            name, REF_DIR, versions = R_VERSIONS)
}
lr_case("lr_sleepstudy", "lmer(Reaction ~ Days + (Days | Subject), data = sleepstudy)",
        "glm(Reaction ~ 1, data = sleepstudy)",
        "lmer(Reaction ~ 1 + (Days | Subject), data = sleepstudy)", "sleepstudy")
lr_case("lr_hsb82_ml", "lmer(mAch ~ meanses + sector + cses + (1 | school), data = hsb82, REML = FALSE)",
        "glm(mAch ~ 1, data = hsb82)",
        "lmer(mAch ~ 1 + (1 | school), data = hsb82, REML = FALSE)", "hsb82")
## lme4's default PIRLS tolerance moves the Laplace logLik in the 6th digit: tolPwrss = 1e-12
lr_case("lr_cbpp", "glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), data = cbpp, family = binomial, control = glmerControl(tolPwrss = 1e-12))",
        "glm(cbind(incidence, size - incidence) ~ 1, data = cbpp, family = binomial)",
        "glmer(cbind(incidence, size - incidence) ~ 1 + (1 | herd), data = cbpp, family = binomial, control = glmerControl(tolPwrss = 1e-12))",
        "cbpp")
