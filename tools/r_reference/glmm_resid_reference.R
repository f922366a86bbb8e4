## R reference values for GLMM residuals (tests/test_glmm_resid.py): lme4's residuals() of
## glmer / glmer.nb fits, deviance (its default), Pearson and response types, with the fitted
## values (conditional modes included).
##
## Run from the repository root:   Rscript tools/r_reference/glmm_resid_reference.R
##
## Writes tests/reference/glmm_resid/*.json; reads tests/data/{cbpp,grouseticks}.csv (no random
## numbers).  Packages: lme4, jsonlite (Debian: r-cran-lme4).

suppressPackageStartupMessages(library(lme4))
source("tools/r_reference/common.R")
REF_DIR <- "tests/reference/glmm_resid"
start_script("glmm_resid_reference.R", REF_DIR)
R_VERSIONS <- r_versions("lme4")

read_data("cbpp")
read_data("grouseticks")
cases <- list(
  c("cbpp_binomial", "lme4::glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), data = cbpp, family = binomial)"),
  c("grouseticks_poisson", "lme4::glmer(TICKS ~ YEAR + (1 | BROOD) + (1 | LOCATION), data = grouseticks, family = poisson)"),
  c("grouseticks_nb", "lme4::glmer.nb(TICKS ~ YEAR + (1 | LOCATION), data = grouseticks)"))
for (case in cases) {
  m <- suppressWarnings(eval(parse(text = case[2])))
  write_ref(list(name = case[1], r_call = case[2],
                 fit = list(fixef = as.list(fixef(m)), theta = unname(getME(m, "theta")),
                            loglik = as.numeric(logLik(m)),
                            nb_theta = if (grepl("glmer.nb", case[2])) getME(m, "glmer.nb.theta") else NULL),
                 fitted = unname(fitted(m)),
                 deviance = unname(residuals(m)),
                 pearson = unname(residuals(m, type = "pearson")),
                 response = unname(residuals(m, type = "response"))),
            case[1], REF_DIR, versions = R_VERSIONS)
}
