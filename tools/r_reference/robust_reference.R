## clubSandwich reference values for cluster-robust covariances of lmer fits (issue 19, part 1).
##
## Run from the repository root:   Rscript tools/r_reference/robust_reference.R
##
## Writes tests/data/robust_nested.csv (+ .levels.json) and tests/reference/robust/NAME.json.
## For each case: lme4's estimates (fixef, theta, sigma, vcov) and, for every small-sample type
## CR0, CR1, CR1p, CR1S, CR2, clubSandwich's vcovCR() matrix and coef_test(test = "All") (SE,
## t, df and p of the z, naive-t, naive-tp and Satterthwaite tests); for CR2 and CR0 also
## Wald_test() of the constraints stored under "constraints" (chi-sq, Naive-F, HTZ).
## clubSandwich refuses models with prior weights and random effects not nested in the
## clusters; the "refusals" file stores its error messages.

suppressPackageStartupMessages({
  library(lme4)
  library(clubSandwich)
})
source("tools/r_reference/common.R")
REF_DIR <- "tests/reference/robust"
start_script("robust_reference.R", c(DATA_DIR, REF_DIR))
VERSIONS <- r_versions(c("lme4", "clubSandwich", "Matrix", "jsonlite"))
TYPES <- c("CR0", "CR1", "CR1p", "CR1S", "CR2")

## ---- data ------------------------------------------------------------------------------------
## pupils in classes in schools; class labels repeat within schools; unequal sizes; a
## school-level and a pupil-level predictor; prior weights for the refusal case
set.seed(20261206)
ns <- 24
rows <- list()
for (s in seq_len(ns)) {
  nc <- sample(2:4, 1)
  for (k in seq_len(nc)) {
    np <- sample(4:9, 1)
    rows[[length(rows) + 1]] <- data.frame(school = sprintf("S%02d", s), class = sprintf("C%d", k),
                                           pupil = seq_len(np))
  }
}
d <- do.call(rbind, rows)
si <- match(d$school, sprintf("S%02d", seq_len(ns)))
ci <- as.integer(factor(paste(d$school, d$class)))
z <- rnorm(ns)
d$x <- rnd(rnorm(nrow(d)) + 0.3 * z[si])
d$z <- rnd(z[si])
## heteroscedastic errors: the model-based SEs are then off and the robust ones matter
d$y <- rnd(1 + 0.5 * d$x - 0.4 * d$z + rnorm(ns, sd = 0.8)[si] + rnorm(max(ci), sd = 0.5)[ci] +
           rnorm(nrow(d), sd = 0.6 + 0.5 * abs(d$x)))
d$w <- rnd(runif(nrow(d), 0.5, 2))
robust_nested <- data.frame(y = d$y, x = d$x, z = d$z, w = d$w,
                            school = factor(d$school), class = factor(d$class))
save_data(robust_nested, "robust_nested")
read_data("sleepstudy")
read_data("hsb82")
read_data("penicillin")

## ---- cases -----------------------------------------------------------------------------------
cr_case <- function(name, formula, data, reml, constraints, cluster = NULL, cluster_name = NULL) {
  call_txt <- sprintf("lme4::lmer(%s, data = %s, REML = %s)", formula, data, reml)
  fit <- run_call(call_txt)$fit
  cl <- if (is.null(cluster)) NULL else get(data)[[cluster]]
  out <- list(name = name, r_call = call_txt, formula = formula, data = paste0(data, ".csv"),
              reml = reml, cluster = cluster,
              cluster_default = names(getME(fit, "flist"))[which.min(getME(fit, "l_i"))],
              nclusters = if (is.null(cl)) min(getME(fit, "l_i")) else nlevels(factor(cl)),
              fixef = as.list(fixef(fit)), theta = I(unname(getME(fit, "theta"))),
              sigma = sigma(fit), loglik = as.numeric(logLik(fit)),
              vcov = unname(lapply(seq_len(length(fixef(fit))), function(i) as.matrix(vcov(fit))[i, ])),
              constraints = unname(lapply(seq_len(nrow(constraints)), function(i) constraints[i, ])))
  for (tp in TYPES) {
    V <- if (is.null(cl)) vcovCR(fit, type = tp) else vcovCR(fit, cluster = cl, type = tp)
    ct <- coef_test(fit, vcov = V, test = "All")
    entry <- list(vcov = unname(lapply(seq_len(nrow(V)), function(i) as.numeric(V[i, ]))),
                  coef_test = list(coef = I(as.character(ct$Coef)), SE = I(ct$SE),
                                   tstat = I(ct$tstat), p_z = I(ct$p_z), df_t = I(ct$df_t),
                                   p_t = I(ct$p_t), df_tp = I(ct$df_tp), p_tp = I(ct$p_tp),
                                   df_Satt = I(ct$df_Satt), p_Satt = I(ct$p_Satt)))
    if (tp %in% c("CR0", "CR2")) {
      wt <- Wald_test(fit, constraints = constraints, vcov = V, test = c("chi-sq", "Naive-F", "HTZ"))
      entry$wald_test <- lapply(split(wt, seq_len(nrow(wt))), function(r) as.list(r))
      names(entry$wald_test) <- wt$test
    }
    out[[tp]] <- entry
  }
  write_ref(out, name, REF_DIR, VERSIONS)
  cat(sprintf("%-24s %d clusters; CR2 SE %s\n", name, out$nclusters,
              paste(signif(sqrt(diag(as.matrix(vcovCR(fit, type = "CR2", cluster = if (is.null(cl)) get_outer_group(fit) else cl)))), 6), collapse = " ")))
}
get_outer_group <- clubSandwich:::get_outer_group

cr_case("sleepstudy_reml", "Reaction ~ Days + (Days | Subject)", "sleepstudy", TRUE,
        constraints = matrix(c(1, 0, 0, 1), 2, 2))
cr_case("nested_reml", "y ~ x + z + (1 | school/class)", "robust_nested", TRUE,
        constraints = matrix(c(0, 1, 0, 0, 0, 1), 2, 3, byrow = TRUE))
cr_case("hsb82_ml", "mAch ~ cses + meanses + sector + (cses | school)", "hsb82", FALSE,
        constraints = matrix(c(0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1), 3, 4, byrow = TRUE),
        cluster = "school")
cr_case("nested_ml_uncorrelated", "y ~ x + z + (x || school)", "robust_nested", FALSE,
        constraints = matrix(c(0, 1, -1), 1, 3))

## ---- what clubSandwich refuses ---------------------------------------------------------------
msg <- function(expr) tryCatch({ expr; "no error" }, error = function(e) conditionMessage(e))
fw <- lmer(y ~ x + z + (1 | school/class), data = robust_nested, weights = w)
fc <- lmer(diameter ~ 1 + (1 | plate) + (1 | sample), data = penicillin)
write_ref(list(weights = list(r_call = "vcovCR(lmer(y ~ x + z + (1 | school/class), data = robust_nested, weights = w), type = \"CR2\")",
                              error = msg(vcovCR(fw, type = "CR2"))),
               crossed = list(r_call = "vcovCR(lmer(diameter ~ 1 + (1 | plate) + (1 | sample), data = penicillin), type = \"CR2\")",
                              error = msg(vcovCR(fc, type = "CR2"))),
               crossed_cluster_plate = list(error = msg(vcovCR(fc, cluster = penicillin$plate, type = "CR2"))),
               class_not_nested_in_cluster = list(
                 r_call = "vcovCR(lmer(y ~ x + z + (1 | school/class)), cluster = robust_nested$class, type = \"CR2\")",
                 error = msg(vcovCR(lmer(y ~ x + z + (1 | school/class), data = robust_nested),
                                    cluster = robust_nested$class, type = "CR2")))),
          "refusals", REF_DIR, VERSIONS)
cat("done\n")
