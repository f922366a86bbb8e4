## R reference values for the Poisson (log link) branch of r2() / icc() (tests/test_inference.py
## test_r2_glmm_poisson): performance::r2_nakagawa and insight::get_variance on lme4's
## grouseticks, with insight's null model (the same random effects, intercept only), whose
## exp(intercept) is the mu of the distribution-specific variance log1p(1 / mu).
##
## Run from the repository root:   Rscript tools/r_reference/r2_poisson_reference.R
##
## Writes tests/reference/inference/r2_grouseticks_poisson.json; reads tests/data/grouseticks.csv
## (no random numbers).  Packages: lme4, performance (+ insight), jsonlite
## (Debian: r-cran-lme4 r-cran-performance).

suppressPackageStartupMessages({
  library(lme4)
  library(performance)
})
source("tools/r_reference/common.R")
REF_DIR <- "tests/reference/inference"
start_script("r2_poisson_reference.R", REF_DIR)
R_VERSIONS <- r_versions(c("lme4", "performance", "insight"))

read_data("grouseticks")
for (case in list(c("r2_grouseticks_poisson", "TICKS ~ YEAR + (1 | BROOD)"),
                  c("r2_grouseticks_poisson2", "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)"))) {
  call <- sprintf("lme4::glmer(%s, data = grouseticks, family = poisson)", case[2])
  m <- eval(parse(text = call))
  n0 <- insight::null_model(m)
  r2 <- suppressWarnings(performance::r2_nakagawa(m))
  v <- suppressWarnings(insight::get_variance(m))
  write_ref(list(name = case[1], r_call = call, data = "grouseticks.csv",
                 fit = list(fixef = as.list(fixef(m)), theta = unname(getME(m, "theta")),
                            loglik = as.numeric(logLik(m))),
                 null = list(formula = deparse(formula(n0)), intercept = unname(fixef(n0)),
                             loglik = as.numeric(logLik(n0))),
                 r2_marginal = unname(r2$R2_marginal), r2_conditional = unname(r2$R2_conditional),
                 var_fixed = v$var.fixed, var_random = v$var.random,
                 var_residual = v$var.residual), case[1], REF_DIR, versions = R_VERSIONS)
}
