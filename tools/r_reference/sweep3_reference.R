## Reference values for tests/test_option_sweep3.py (options no other test passed).
##   Rscript tools/r_reference/sweep3_reference.R      (from the repository root)
## Writes tests/reference/sweep3/sweep3.json.  Data: the bundled wine (mlmext/datasets/data).
suppressPackageStartupMessages({ library(ordinal); library(jsonlite) })
source("tools/r_reference/common.R")
start_script("sweep3_reference.R", "tests/reference/sweep3")
read_data("wine", "mlmext/datasets/data")
out <- list()

## clmm: anova of three nested fits (ordinal's LR tests)
m0 <- clmm(rating ~ temp + (1 | judge), data = wine)
m1 <- clmm(rating ~ temp + contact + (1 | judge), data = wine)
m2 <- clmm(rating ~ temp * contact + (1 | judge), data = wine)
a <- anova(m0, m1, m2)
out$clmm_anova <- list(npar = a$no.par, AIC = a$AIC, logLik = a$logLik, LR = a$LR.stat,
                       df = a$df, p = a[["Pr(>Chisq)"]])
## clmm: link and threshold options together, and AGQ with symmetric thresholds
fit_ref <- function(f) list(loglik = as.numeric(logLik(f)), coef = as.list(coef(f)),
                            sd = attr(VarCorr(f)$judge, "stddev")[[1]])
out$probit_equidistant <- fit_ref(clmm(rating ~ temp + contact + (1 | judge), data = wine,
                                       link = "probit", threshold = "equidistant"))
out$symmetric_agq7 <- fit_ref(clmm(rating ~ temp + contact + (1 | judge), data = wine,
                                   threshold = "symmetric", nAGQ = 7))
write_ref(out, "sweep3", "tests/reference/sweep3", r_versions(c("ordinal")))
