## Reference values for tests/test_option_sweep2.py (options no other test passed).
##   Rscript tools/r_reference/sweep2_reference.R      (from the repository root)
## Writes tests/reference/sweep2/sweep2.json.  Data: the bundled datasets (mlmext/datasets/data).
suppressPackageStartupMessages({ library(lme4); library(lmerTest); library(emmeans)
  library(geepack); library(ordinal); library(performance) })
source("tools/r_reference/common.R")
start_script("sweep2_reference.R", "tests/reference/sweep2")
dd <- "mlmext/datasets/data"
read_data("dietox", dd); read_data("cbpp", dd)
emm_df <- function(e) { s <- as.data.frame(summary(e)); s[] <- lapply(s, function(c) if (is.factor(c)) as.character(c) else c); s }
out <- list()

## LMM: lmerTest anova types and df methods, emmeans options
dietox$Time3 <- pmin(dietox$Time, 3)                 # a covariate with 3 distinct values
m <- lmer(Weight ~ Evit * Cu + Time + (1 | Pig), dietox, REML = TRUE)
for (ty in c("1", "2", "3")) for (dm in c("Satterthwaite", "Kenward-Roger")) {
  a <- anova(m, type = as.integer(ty), ddf = dm)
  out[[paste0("anova_", ty, "_", dm)]] <- list(F = a[["F value"]], DenDF = a$DenDF, NumDF = a$NumDF)
}
emm_options(lmer.df = "kenward-roger")
out$emm_prop <- emm_df(emmeans(m, ~ Evit, weights = "proportional"))
out$emm_at <- emm_df(emmeans(m, ~ Cu, at = list(Time = c(2, 8))))
out$emm_by <- emm_df(emmeans(m, ~ Evit | Cu))
out$pairs_by <- emm_df(pairs(emmeans(m, ~ Evit | Cu)))
out$trt_holm <- emm_df(contrast(emmeans(m, ~ Cu), "trt.vs.ctrl", adjust = "holm"))
for (a in c("fdr", "BH", "BY", "hochberg"))        # R's p.adjust step-up methods, 36 tests
  out[[paste0("pairs_9_", a)]] <- emm_df(pairs(emmeans(m, ~ Evit * Cu), adjust = a))
out$trt_ref2 <- emm_df(contrast(emmeans(m, ~ Cu), "trt.vs.ctrl", ref = 2, adjust = "none"))
out$trt_by_dunnettx <- emm_df(contrast(emmeans(m, ~ Evit | Cu), "trt.vs.ctrl"))   # default adjust
out$pairs_9_tukey <- emm_df(pairs(emmeans(m, ~ Evit * Cu)))
out$emm_level90 <- emm_df(emmeans(m, ~ Evit, level = 0.9))
out$rev_bonf <- emm_df(contrast(emmeans(m, ~ Cu), "revpairwise", adjust = "bonferroni"))
out$pairs_sidak <- emm_df(pairs(emmeans(m, ~ Cu), adjust = "sidak"))
m3 <- lmer(Weight ~ Evit + Time3 + (1 | Pig), dietox, REML = TRUE)
out$cov_keep_default <- emm_df(emmeans(m3, ~ Evit))
out$cov_keep_3 <- emm_df(emmeans(m3, ~ Evit, cov.keep = 3))
out$cov_keep_3_prop <- emm_df(emmeans(m3, ~ Evit, cov.keep = 3, weights = "proportional"))
## emmeans' .wgt. of a weighted lmer: row counts for a plain formula, the prior weights when the
## fixed part calls a function (recover_data then rebuilds the rows with model.frame);
## Satterthwaite df (Kenward-Roger is not implemented here for weighted fits)
dietox$w <- dietox$Start / 20
mw <- lmer(Weight ~ Evit + Cu + Time + (1 | Pig), dietox, weights = w)
out$wt_plain_prop <- emm_df(emmeans(mw, ~ Evit, weights = "proportional", lmer.df = "satterthwaite"))
out$wt_plain_cells <- emm_df(emmeans(mw, ~ Evit, weights = "cells", lmer.df = "satterthwaite"))
mf <- lmer(Weight ~ Evit + Cu + log(Time) + (1 | Pig), dietox, weights = w)
out$wt_fn_prop <- emm_df(emmeans(mf, ~ Evit, weights = "proportional", lmer.df = "satterthwaite"))
mp <- lmer(Weight ~ (Evit + Cu)^2 + Time + (1 | Pig), dietox, weights = w)   # ^ counts as a function
out$wt_pow_prop <- emm_df(emmeans(mp, ~ Evit, weights = "proportional", lmer.df = "satterthwaite"))
out$drop1 <- { d <- drop1(m, ddf = "Kenward-Roger"); list(F = d[["F value"]], DenDF = d$DenDF) }
mr <- lmer(Weight ~ Time + (Time | Pig), dietox, REML = TRUE)
out$ranova <- { r <- ranova(mr); list(logLik = r$logLik, LRT = r$LRT, Df = r$Df, npar = r$npar) }
read_data("sleepstudy", dd)
rv <- function(r) list(logLik = r$logLik, Df = r$Df)
out$ranova_uncorr <- rv(ranova(lmer(Reaction ~ Days + (Days || Subject), sleepstudy), reduce.terms = FALSE))
out$ranova_two_ml <- rv(ranova(lmer(Weight ~ Time + (Time | Pig) + (1 | Litter), dietox, REML = FALSE)))
out$ranova_nested <- rv(ranova(lmer(Weight ~ Time + (1 | Litter/Pig), dietox)))
out$ranova_full <- { r <- ranova(mr, reduce.terms = FALSE); list(logLik = r$logLik, LRT = r$LRT, Df = r$Df) }

## GLMM: Poisson with an offset
cbpp$lsize <- log(cbpp$size)
## (the offset in the formula: predict(newdata) leaves out an offset= argument's offset;
## a tight optimizer tolerance so the optimum is the one the test's tolerance assumes)
g <- glmer(incidence ~ period + offset(log(size)) + (1 | herd), cbpp, family = poisson,
           control = glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10),
                                  tolPwrss = 1e-12))
out$pois_offset <- list(logLik = as.numeric(logLik(g)), beta = unname(fixef(g)),
                        theta = unname(getME(g, "theta")),
                        pred_new = unname(predict(g, newdata = data.frame(period = factor(c("1", "3"), levels = levels(cbpp$period)), herd = c("1", "zz"), size = c(10, 20)), allow.new.levels = TRUE, type = "response")))
out$pois_offset_emm <- emm_df(emmeans(g, ~ period))          # the mean of the fitted offsets
out$pois_offset_emm_rate <- emm_df(emmeans(g, ~ period, type = "response"))
gp <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, family = binomial(link = "probit"))
out$binom_probit <- list(logLik = as.numeric(logLik(gp)), beta = unname(fixef(gp)), theta = unname(getME(gp, "theta")))
gc <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, family = binomial(link = "cloglog"), nAGQ = 9)
out$binom_cloglog_agq9 <- list(logLik = as.numeric(logLik(gc)), beta = unname(fixef(gc)), theta = unname(getME(gc, "theta")))
## GEE with an offset: QIC of geepack's fits for each working correlation
cb <- cbpp[order(cbpp$herd), ]
for (cs in c("independence", "exchangeable", "ar1")) {
  f <- geeglm(incidence ~ period + offset(log(size)), id = herd, family = poisson, data = cb,
              corstr = cs, control = geese.control(epsilon = 1e-10, maxit = 200))
  q <- QIC(f)
  out[[paste0("gee_offset_", cs)]] <- list(coef = unname(coef(f)), QIC = q[["QIC"]],
                                            QICu = q[["QICu"]], CIC = q[["CIC"]])
}
## performance's ICC and Nakagawa R2 of a clmm (latent scale: the link's variance) and of a
## probit GLMM
read_data("wine", dd)
r2icc <- function(f) list(icc_adjusted = icc(f)$ICC_adjusted, icc_conditional = icc(f)$ICC_conditional,
                          r2_marginal = r2_nakagawa(f)$R2_marginal[[1]],
                          r2_conditional = r2_nakagawa(f)$R2_conditional[[1]])
for (lk in c("logit", "probit"))
  out[[paste0("r2_clmm_", lk)]] <- r2icc(clmm(rating ~ temp + contact + (1 | judge), data = wine, link = lk))
out$r2_glmm_probit <- r2icc(gp)
write_ref(out, "sweep2", "tests/reference/sweep2",
          r_versions(c("lme4", "lmerTest", "emmeans", "pbkrtest", "geepack", "ordinal", "performance")))
