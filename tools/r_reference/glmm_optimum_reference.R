## lme4 / glmmTMB reference fits for the GLMM optimum and covariance checks (issue 13).
##
## Run from the repository root:   Rscript tools/r_reference/glmm_optimum_reference.R
##
## Writes (same layout as glmm_reference.R, whose case writers it shares via glmm_common.R)
##   tests/data/{imm10,binsaddle,salamanders}.csv + .levels.json
##   tests/reference/glmm/{imm10_singular,binsaddle_slope,salamanders_nb_tmb}.json
##
## * imm10_singular: Kreft & de Leeuw's 10-school NELS-88 subset (UCLA IDRE's imm10.dta),
##   white ~ homework + (1 + homework | schid), binomial.  A singular fit (the slope's last
##   theta is 0) whose finite-difference Hessian is positive definite: lme4 1.1-31 then takes
##   the covariance of the fixed effects from that Hessian (SE 1.473 for the intercept), not
##   from RX (1.385, stored as se_rx).  The file also keeps lme4's Hessian (optinfo$derivs).
##   The script reads tests/data/imm10.csv (first run: a CSV copy of imm10.dta, 260 rows x 19
##   columns) and writes it back in write.csv's format with schid as a factor.
## * binsaddle_slope: simulated (set.seed(20240616)), 40 groups x 12 binary responses, with the
##   random effect on (x - 10) and x in [9, 11], so that intercept and slope variances are
##   strongly negatively correlated: y ~ x + (1 + x | g).  Started at theta = 0, a gradient
##   method sits at a saddle; the tests check that mlmext's fit leaves it.
## * salamanders_nb_tmb: glmmTMB's Salamanders, count ~ spp + mined + (1 | site), nbinom2.
##   glmmTMB inverts the Hessian in (beta, theta, log dispersion); with the dispersion held
##   fixed (lme4's glmer.nb convention) the SEs are up to 0.46 % smaller (sppDF).

suppressPackageStartupMessages({
  library(lme4)
  library(glmmTMB)
})

source("tools/r_reference/common.R")
REF_DIR <- "tests/reference/glmm"
start_script("glmm_optimum_reference.R", c(DATA_DIR, REF_DIR))
source("tools/r_reference/glmm_common.R")

## ---- datasets -------------------------------------------------------------------------------
imm10 <- read.csv(file.path(DATA_DIR, "imm10.csv"), stringsAsFactors = FALSE)
stopifnot(nrow(imm10) == 260, length(unique(imm10$schid)) == 10)
imm10$schid <- factor(imm10$schid)                 # levels in numeric order of the school ids
save_data(imm10, "imm10")

set.seed(20240616)
ng <- 40; nr <- 12
g <- rep(seq_len(ng), each = nr)
x <- rnd(runif(ng * nr, 9, 11))
u <- rnorm(ng)[g]
eta <- 0.2 + 0.3 * (x - 10) + u * (x - 10)
binsaddle <- data.frame(g = factor(sprintf("g%02d", g)), x = x, y = rbinom(ng * nr, 1, plogis(eta)))
save_data(binsaddle, "binsaddle")

data(Salamanders, package = "glmmTMB")
salamanders <- data.frame(site = factor(as.character(Salamanders$site), levels = levels(Salamanders$site)),
                          mined = Salamanders$mined, spp = Salamanders$spp, count = Salamanders$count,
                          cover = Salamanders$cover, DOP = Salamanders$DOP, Wtemp = Salamanders$Wtemp,
                          DOY = Salamanders$DOY)
save_data(salamanders, "salamanders")

## ---- cases ------------------------------------------------------------------------------------
## lme4's RX-based SEs (vcov(use.hessian = FALSE)) and its Hessian of the deviance in (theta, beta)
hessian_keys <- function(fit, dflt) {
  se_rx <- suppressWarnings(sqrt(diag(as.matrix(vcov(fit, use.hessian = FALSE)))))
  H <- fit@optinfo$derivs$Hessian
  list(se_rx = as.list(setNames(se_rx, names(fixef(fit)))),
       hessian = lapply(seq_len(nrow(H)), function(i) H[i, ]))
}
ref_case("imm10_singular", "white ~ homework + (1 + homework | schid)", "imm10", "binomial",
         note = "singular (last theta 0); lme4 1.1-31 takes the SEs from the finite-difference Hessian",
         extra = hessian_keys)
ref_case("binsaddle_slope", "y ~ x + (1 + x | g)", "binsaddle", "binomial",
         note = "from theta = 0 a gradient method stops at a saddle (tests/test_glmm_optimum.py)",
         extra = hessian_keys)
tmb_case("salamanders_nb_tmb", "count ~ spp + mined + (1 | site)", "salamanders", "nbinom2",
         note = "glmmTMB: Laplace with the observed information (information='observed' in mlmext)")
