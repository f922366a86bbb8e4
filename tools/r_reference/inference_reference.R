## R reference values for mlmext's inference module (tests/test_inference.py).
##
## Run from the repository root:   Rscript tools/r_reference/inference_reference.R
##
## Writes tests/reference/inference/NAME.json and the datasets tests/data/hsb82.csv and
## tests/data/corbound.csv (with .levels.json).  Everything is deterministic: the only
## random numbers are the simulated `corbound` data (set.seed) and the parametric bootstrap
## (set.seed before bootMer).  Each model is fitted on the data as read back from the CSV
## the Python side reads.
##
## Packages: lme4, lmerTest, pbkrtest, performance (+ insight), mlmRev, jsonlite
## (Debian: r-cran-lme4 r-cran-lmertest r-cran-pbkrtest r-cran-performance r-cran-mlmrev).
## HLMdiag is not packaged for Debian, so its group-deletion Cook's distance is computed
## below by the same formulas as HLMdiag 0.5 (`.lmerMod_matrices` + `cooksdSubset`), written
## out in plain R (see hlmdiag_cooks()).

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(pbkrtest)
  library(performance)
  library(mlmRev)
})

## save_data(), read_data(), capture_conditions(), ci_rows(), profile_points(), ... (DATA_DIR)
source("tools/r_reference/common.R")
REF_DIR <- "tests/reference/inference"
start_script("inference_reference.R", REF_DIR)
R_VERSIONS <- r_versions(c("lme4", "lmerTest", "pbkrtest", "performance", "insight", "mlmRev"))

## REF_DIR/NAME.json, with r_versions as its last key
write_inference_ref <- function(x, name) write_ref(x, name, REF_DIR, versions = R_VERSIONS)

coef_table <- function(tab) {
  tab <- as.data.frame(tab)
  lapply(split(tab, factor(rownames(tab), levels = rownames(tab))), function(r) as.list(r[1, ]))
}

## ---- data -------------------------------------------------------------------------------
hsb <- Hsb82[, c("school", "mAch", "meanses", "cses", "ses", "sector")]
hsb$school <- factor(as.character(hsb$school), levels = levels(hsb$school))  # plain (unordered) factor
save_data(hsb, "hsb82")

set.seed(2)      # a correlation whose 95 % profile interval ends at +1 (one-sided)
ng <- 12; nper <- 6
g <- factor(rep(sprintf("g%02d", 1:ng), each = nper))
x <- rep(seq(-1, 1, length.out = nper), ng)
b0 <- rnorm(ng, 0, 1); b1 <- 0.9 * b0 + rnorm(ng, 0, 0.1)
y <- 1 + 0.5 * x + b0[g] + b1[g] * x + rnorm(ng * nper, 0, 0.5)
save_data(data.frame(y = round(y, 6), x = round(x, 6), g = g), "corbound")

for (nm in c("sleepstudy", "penicillin", "singular")) read_data(nm)

fit_info <- function(m) list(fixef = as.list(fixef(m)), theta = unname(getME(m, "theta")),
                             sigma = sigma(m), loglik = as.numeric(logLik(m)))

## ---- 1. Satterthwaite and Kenward-Roger (lmerTest / pbkrtest) ------------------------------
ddf_case <- function(name, formula, data, contrasts = list(), contrasts_md = list()) {
  call <- sprintf("lmerTest::lmer(%s, data = %s)", formula, data)
  m <- eval(parse(text = call))
  mml <- update(m, REML = FALSE)
  ct <- lapply(contrasts, function(L) list(
    L = L,
    satterthwaite = as.list(contest1D(m, L, ddf = "Satterthwaite")),
    kenward_roger = as.list(contest1D(m, L, ddf = "Kenward-Roger")),
    satterthwaite_ml = as.list(contest1D(mml, L, ddf = "Satterthwaite"))))
  cmd <- lapply(contrasts_md, function(L) list(
    L = L,
    satterthwaite = as.list(contestMD(m, L, ddf = "Satterthwaite")),
    kenward_roger = as.list(contestMD(m, L, ddf = "Kenward-Roger"))))
  write_inference_ref(list(
    name = name, r_call = call, data = paste0(data, ".csv"), formula = formula,
    fit = fit_info(m), fit_ml = fit_info(mml),
    satterthwaite = coef_table(summary(m)$coefficients),
    kenward_roger = coef_table(summary(m, ddf = "Kenward-Roger")$coefficients),
    satterthwaite_ml = coef_table(summary(mml)$coefficients),
    vcov_kr = unname(as.matrix(vcovAdj(m))),
    contrasts = ct, contrasts_md = cmd), name)
}
ddf_case("ddf_hsb82", "mAch ~ meanses * cses + (cses | school)", "hsb82",
         contrasts = list(c(0, 1, 0, 1), c(1, 0.5, -1, 0)),
         contrasts_md = list(rbind(c(0, 1, 0, 0), c(0, 0, 0, 1))))
ddf_case("ddf_sleepstudy", "Reaction ~ Days + (Days | Subject)", "sleepstudy",
         contrasts = list(c(1, 7)))
ddf_case("ddf_penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin")

## ---- 2. profile-likelihood intervals (lme4::confint(method = "profile")) -------------------
profile_case <- function(name, formula, data, reml = TRUE, level = 0.95) {
  call <- sprintf("lme4::lmer(%s, data = %s, REML = %s)", formula, data, reml)
  m <- eval(parse(text = call))
  warns <- capture_conditions({
    pr <- profile(m, signames = FALSE)
    ci <- confint(pr, level = level)
    ci90 <- confint(pr, level = 0.90)
  }, messages = FALSE)$warnings
  ci_old <- suppressMessages(suppressWarnings(confint(m, method = "profile", oldNames = TRUE)))
  mml <- refitML(m)
  write_inference_ref(list(
    name = name, r_call = call, data = paste0(data, ".csv"), formula = formula, reml = reml,
    fit = fit_info(m), fit_ml = fit_info(mml), singular = isSingular(m),
    confint = ci_rows(ci, sorted = TRUE), confint90 = ci_rows(ci90, sorted = TRUE),
    rownames = rownames(ci), oldnames = rownames(ci_old),
    profile = profile_points(pr), warnings = unique(warns)), name)
}
profile_case("profile_sleepstudy", "Reaction ~ Days + (Days | Subject)", "sleepstudy")
profile_case("profile_penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin")
profile_case("profile_singular", "y ~ x + (1 | g)", "singular")
profile_case("profile_corbound", "y ~ x + (x | g)", "corbound", reml = FALSE)

## ---- 3. likelihood-ratio tests (lme4::anova) ------------------------------------------------
anova_case <- function(name, calls, data_name) {
  mods <- lapply(calls, function(cl) eval(parse(text = cl)))
  names(mods) <- names(calls)
  msgs <- character(0)
  tab <- withCallingHandlers(do.call(anova, c(unname(mods), list(model.names = names(calls)))),
                             message = function(m) { msgs <<- c(msgs, trimws(conditionMessage(m)));
                                                      invokeRestart("muffleMessage") })
  tab <- as.data.frame(tab)
  write_inference_ref(list(name = name, calls = as.list(calls), data = paste0(data_name, ".csv"),
                 table = coef_table(tab), messages = msgs,
                 loglik = lapply(mods, function(m) as.numeric(logLik(m)))), name)
}
anova_case("anova_sleepstudy_reml", c(
  m0 = "lme4::lmer(Reaction ~ Days + (1 | Subject), data = sleepstudy)",
  m1 = "lme4::lmer(Reaction ~ Days + (Days | Subject), data = sleepstudy)"), "sleepstudy")
anova_case("anova_sleepstudy_ml3", c(
  m0 = "lme4::lmer(Reaction ~ 1 + (Days | Subject), data = sleepstudy, REML = FALSE)",
  m2 = "lme4::lmer(Reaction ~ Days + I(Days^2) + (Days | Subject), data = sleepstudy, REML = FALSE)",
  m1 = "lme4::lmer(Reaction ~ Days + (Days | Subject), data = sleepstudy, REML = FALSE)"), "sleepstudy")
shared_data <- Sys.getenv("MLMEXT_SHARED_DATA", "../shared/data")
if (file.exists(file.path(shared_data, "cbpp.csv"))) {
  read_data("cbpp", shared_data)
  anova_case("anova_cbpp", c(
    g0 = "lme4::glmer(cbind(incidence, size - incidence) ~ 1 + (1 | herd), data = cbpp, family = binomial)",
    g1 = "lme4::glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), data = cbpp, family = binomial)"),
    "cbpp")
}

if (file.exists(file.path(shared_data, "wine.csv")) && requireNamespace("ordinal", quietly = TRUE)) {
  suppressPackageStartupMessages(library(ordinal))
  read_data("wine", shared_data)
  c0 <- clmm(rating ~ temp + (1 | judge), data = wine)
  c1 <- clmm(rating ~ temp + contact + (1 | judge), data = wine)
  tab <- as.data.frame(anova(c0, c1))
  write_inference_ref(list(name = "anova_wine_clmm", data = "wine.csv",
                 calls = list(c0 = "ordinal::clmm(rating ~ temp + (1 | judge), data = wine)",
                              c1 = "ordinal::clmm(rating ~ temp + contact + (1 | judge), data = wine)"),
                 table = coef_table(tab), ordinal = packageDescription("ordinal")$Version), "anova_wine_clmm")
}

## ---- 4. ICC and R2 (performance) and Snijders-Bosker R2 ------------------------------------
r2_case <- function(name, call, data_name) {
  m <- eval(parse(text = call))
  r2 <- suppressWarnings(performance::r2_nakagawa(m))
  ic <- suppressWarnings(performance::icc(m))
  v <- suppressWarnings(insight::get_variance(m))
  write_inference_ref(list(name = name, r_call = call, data = paste0(data_name, ".csv"),
                 fit = if (isLMM(m)) fit_info(m) else list(fixef = as.list(fixef(m)),
                                                            theta = unname(getME(m, "theta"))),
                 r2_marginal = unname(r2$R2_marginal), r2_conditional = unname(r2$R2_conditional),
                 icc_adjusted = ic$ICC_adjusted, icc_conditional = ic$ICC_conditional,
                 var_fixed = v$var.fixed, var_random = v$var.random,
                 var_residual = v$var.residual), name)
}
r2_case("r2_sleepstudy", "lme4::lmer(Reaction ~ Days + (Days | Subject), data = sleepstudy)", "sleepstudy")
r2_case("r2_hsb82", "lme4::lmer(mAch ~ meanses * cses + (cses | school), data = hsb82)", "hsb82")
r2_case("r2_penicillin", "lme4::lmer(diameter ~ 1 + (1 | plate) + (1 | sample), data = penicillin)",
        "penicillin")
r2_case("r2_hsb82_ml", "lme4::lmer(mAch ~ meanses + sector + cses + (1 | school), data = hsb82, REML = FALSE)",
        "hsb82")
if (exists("c1")) {
  r2 <- suppressWarnings(performance::r2_nakagawa(c1)); ic <- suppressWarnings(performance::icc(c1))
  v <- suppressWarnings(insight::get_variance(c1))
  write_inference_ref(list(name = "r2_wine_clmm", r_call = "ordinal::clmm(rating ~ temp + contact + (1 | judge), data = wine)",
                 data = "wine.csv", r2_marginal = unname(r2$R2_marginal), r2_conditional = unname(r2$R2_conditional),
                 icc_adjusted = ic$ICC_adjusted, icc_conditional = ic$ICC_conditional,
                 var_fixed = v$var.fixed, var_random = v$var.random, var_residual = v$var.residual), "r2_wine_clmm")
}
if (exists("cbpp"))
  r2_case("r2_cbpp", "lme4::glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), data = cbpp, family = binomial)",
          "cbpp")

## Snijders & Bosker (2012, sec. 7.1) for random-intercept models, from lme4's variance
## components of the model and of the empty model  y ~ 1 + (1 | g)  (same REML/ML):
##   R2_1 = 1 - (s2 + t2) / (s2_0 + t2_0),   R2_2 = 1 - (s2 / nbar + t2) / (s2_0 / nbar + t2_0)
## with nbar the mean group size n / J (also stored: the harmonic mean version).
sb_case <- function(name, call, null_call, data_name, group) {
  m <- eval(parse(text = call)); m0 <- eval(parse(text = null_call))
  vc <- function(mm) { v <- as.data.frame(VarCorr(mm)); c(t2 = v$vcov[v$grp == group], s2 = sigma(mm)^2) }
  a <- vc(m); b <- vc(m0)
  d <- get(data_name)
  ns <- table(d[[group]])
  out <- list()
  for (nb in c("mean", "harmonic")) {
    nbar <- if (nb == "mean") nrow(d) / length(ns) else length(ns) / sum(1 / ns)
    out[[nb]] <- list(nbar = nbar,
                      r2_level1 = unname(1 - (a["s2"] + a["t2"]) / (b["s2"] + b["t2"])),
                      r2_level2 = unname(1 - (a["s2"] / nbar + a["t2"]) / (b["s2"] / nbar + b["t2"])))
  }
  write_inference_ref(list(name = name, r_call = call, null_call = null_call, data = paste0(data_name, ".csv"),
                 model_vc = as.list(a), null_vc = as.list(b), values = out), name)
}
sb_case("sb_hsb82", "lme4::lmer(mAch ~ meanses + cses + (1 | school), data = hsb82, REML = FALSE)",
        "lme4::lmer(mAch ~ 1 + (1 | school), data = hsb82, REML = FALSE)", "hsb82", "school")
sb_case("sb_hsb82_reml", "lme4::lmer(mAch ~ meanses + sector + cses + (1 | school), data = hsb82)",
        "lme4::lmer(mAch ~ 1 + (1 | school), data = hsb82)", "hsb82", "school")

## ---- 5. influence by group deletion (HLMdiag's cooks.distance, level = group) ---------------
## HLMdiag 0.5 .lmerMod_matrices() + cooksdSubset(), in plain R: V = sigma^2 (I + Z Lambda Lambda' Z'),
## P = V^-1 - V^-1 X (X'V^-1X)^-1 X'V^-1, e = y - X beta, and for the rows I of a group
##   d_I = (X'V^-1X)^-1 X' V^-1[, I] P[I, I]^-1 V^-1[I, ] e,   D_I = d_I' (X'V^-1X) d_I / p.
hlmdiag_cooks <- function(model, level) {
  Y <- model@resp$y; X <- getME(model, "X"); n <- length(Y)
  sig0 <- getME(model, "sigma")
  V <- Diagonal(n = n, x = sig0^2) + sig0^2 * crossprod(getME(model, "A"))
  Vinv <- as.matrix(chol2inv(chol(V)))
  XVXinv <- solve(t(X) %*% Vinv %*% X)
  VinvX <- Vinv %*% X
  P <- Vinv - VinvX %*% XVXinv %*% t(VinvX)
  betaHat <- XVXinv %*% t(X) %*% Vinv %*% Y
  e <- Y - X %*% betaHat
  f <- getME(model, "flist")[[level]]
  res <- lapply(levels(f), function(l) {
    ind <- which(f == l)
    cdd <- XVXinv %*% t(X) %*% Vinv[, ind, drop = FALSE] %*% solve(P[ind, ind, drop = FALSE]) %*%
      Vinv[ind, , drop = FALSE] %*% e
    list(level = l, cooksd = drop(t(cdd) %*% solve(XVXinv) %*% cdd) / ncol(X), beta_change = drop(cdd))
  })
  res
}
refit_deletion <- function(model, data, group) {
  lapply(levels(data[[group]]), function(l) {
    sub <- data[data[[group]] != l, ]
    sub[[group]] <- droplevels(sub[[group]])
    m1 <- suppressMessages(update(model, data = sub))
    list(level = l, fixef = unname(fixef(m1)))
  })
}
infl_case <- function(name, call, data_name, group) {
  m <- eval(parse(text = call))
  write_inference_ref(list(name = name, r_call = call, data = paste0(data_name, ".csv"), group = group,
                 fit = fit_info(m), fixef_names = names(fixef(m)),
                 hlmdiag = hlmdiag_cooks(m, group),
                 refit = refit_deletion(m, get(data_name), group)), name)
}
infl_case("influence_sleepstudy", "lme4::lmer(Reaction ~ Days + (Days | Subject), data = sleepstudy)",
          "sleepstudy", "Subject")
infl_case("influence_penicillin", "lme4::lmer(diameter ~ 1 + (1 | plate) + (1 | sample), data = penicillin)",
          "penicillin", "sample")

## ---- 6. convergence: lme4's derivatives of the deviance at the optimum ---------------------
conv_case <- function(name, call) {
  m <- eval(parse(text = call))
  d <- m@optinfo$derivs
  write_inference_ref(list(name = name, r_call = call, fit = fit_info(m), reml = isREML(m),
                 deviance = if (isREML(m)) REMLcrit(m) else deviance(m),
                 gradient = d$gradient, hessian = d$Hessian,
                 conv_messages = m@optinfo$conv$lme4$messages), name)
}
conv_case("convergence_sleepstudy", "lme4::lmer(Reaction ~ Days + (Days | Subject), data = sleepstudy)")
conv_case("convergence_penicillin_ml",
          "lme4::lmer(diameter ~ 1 + (1 | plate) + (1 | sample), data = penicillin, REML = FALSE)")

## ---- 7. parametric bootstrap (lme4::confint(method = "boot")) -------------------------------
## Monte Carlo values: Python cannot reproduce R's random numbers, so the tests compare with a
## tolerance of a few Monte Carlo standard errors.
boot_case <- function(name, call, nsim, seed) {
  m <- eval(parse(text = call))
  set.seed(seed)
  b <- bootMer(m, function(x) c(sigma = sigma(x), fixef(x),
                                sdcor = as.data.frame(VarCorr(x))$sdcor), nsim = nsim)
  set.seed(seed)
  ci <- suppressMessages(confint(m, method = "boot", nsim = nsim, oldNames = FALSE, boot.type = "perc"))
  write_inference_ref(list(name = name, r_call = call, nsim = nsim, seed = seed,
                 confint_perc = ci_rows(ci, sorted = TRUE),
                 rownames = rownames(ci),
                 boot_mean = as.list(colMeans(b$t)), boot_sd = as.list(apply(b$t, 2, sd))), name)
}
boot_case("boot_sleepstudy", "lme4::lmer(Reaction ~ Days + (Days | Subject), data = sleepstudy)", 1000, 101)

## ---- 8. interval formulas of boot::boot.ci and binom.test (deterministic checks) -----------
## A fixed bootstrap object (boot() with set.seed) so that Python can apply its perc / basic /
## norm formulas to the very same replicates; and Clopper-Pearson intervals (simr's power CI).
suppressPackageStartupMessages(library(boot))
set.seed(7)
bdat <- rexp(40)
bo <- boot(bdat, function(d, i) c(mean(d[i]), median(d[i])), R = 199)
bci <- lapply(1:2, function(i) {
  ci <- boot.ci(bo, index = i, conf = 0.9, type = c("perc", "basic", "norm"))
  list(t0 = unname(bo$t0[i]), t = bo$t[, i], perc = unname(ci$percent[4:5]),
       basic = unname(ci$basic[4:5]), norm = unname(ci$normal[2:3]))
})
binom <- lapply(list(c(0, 20), c(7, 20), c(20, 20), c(83, 100)), function(kn)
  list(k = kn[1], n = kn[2], ci = unname(binom.test(kn[1], kn[2])$conf.int)))
write_inference_ref(list(name = "boot_formulas", conf = 0.9, stats = bci, binom = binom,
               boot_version = packageDescription("boot")$Version), "boot_formulas")

cat("done\n")
