## R reference values for lmerTest's tables and lme4's coef() / correlation of fixed effects
## (tests/test_lmertest.py).
##
## Run from the repository root:   Rscript tools/r_reference/lmertest_reference.R
##
## Writes tests/reference/lmertest/NAME.json and the datasets tests/data/ham.csv (lmerTest's
## `ham`) and tests/data/sleepgrp.csv (sleepstudy with a made-up between-subject factor `grp`
## and a within-subject factor `phase`), with .levels.json.  Deterministic: no random numbers.
## Each model is fitted on the data as read back from the CSV the Python side reads.
##
## Packages: lme4, lmerTest, pbkrtest, jsonlite.

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(pbkrtest)
})
source("tools/r_reference/common.R")
REF_DIR <- "tests/reference/lmertest"
start_script("lmertest_reference.R", REF_DIR)
R_VERSIONS <- r_versions(c("lme4", "lmerTest", "pbkrtest"))
write_lt_ref <- function(x, name) write_ref(x, name, REF_DIR, versions = R_VERSIONS)

## an anova / data frame as {row: {column: value}} in row order
tab_rows <- function(tab) {
  tab <- as.data.frame(tab)
  lapply(split(tab, factor(rownames(tab), levels = rownames(tab))), function(r) as.list(r[1, ]))
}
coef_rows <- function(cf) lapply(cf, function(df) list(levels = rownames(df), columns = names(df),
                                                        values = unname(as.matrix(df))))

## ---- data -------------------------------------------------------------------------------
data("ham", package = "lmerTest")
save_data(ham, "ham")
read_data("sleepstudy")
sg <- sleepstudy
sg$grp <- factor(c("A", "B", "C")[(as.integer(sg$Subject) - 1L) %% 3L + 1L])
sg$phase <- factor(ifelse(sg$Days < 5, "early", "late"))
save_data(sg, "sleepgrp")
read_data("nested3")
read_data("hsb82")
nested3$cid <- paste(nested3$region, nested3$school, nested3$class, sep = "_")  # unique class ids

## ---- 1. lmerTest tables for one model ------------------------------------------------------
lt_case <- function(name, formula, data, kr = TRUE, contrasts = NULL, py_formula = formula) {
  call <- if (is.null(contrasts)) sprintf("lmerTest::lmer(%s, data = %s)", formula, data)
          else sprintf("lmerTest::lmer(%s, data = %s, contrasts = %s)", formula, data, contrasts)
  m <- eval(parse(text = call))
  out <- list(name = name, r_call = call, data = paste0(data, ".csv"), formula = formula,
              py_formula = py_formula,
              fixef = as.list(fixef(m)), theta = unname(getME(m, "theta")), sigma = sigma(m),
              loglik = as.numeric(logLik(m)))
  an <- list()
  for (ty in c(3, 2, 1)) an[[paste0("type", ty, "_satterthwaite")]] <-
    tab_rows(suppressMessages(anova(m, type = ty)))
  if (kr) for (ty in c(3, 2)) an[[paste0("type", ty, "_kenward_roger")]] <-
    tab_rows(suppressMessages(anova(m, type = ty, ddf = "Kenward-Roger")))
  out$anova <- an
  out$drop1 <- tab_rows(drop1(m))
  if (kr) out$drop1_kenward_roger <- tab_rows(drop1(m, ddf = "Kenward-Roger"))
  out$ranova <- tab_rows(ranova(m))
  out$ranova_complete <- tab_rows(ranova(m, reduce.terms = FALSE))
  out$coef <- coef_rows(coef(m))
  cr <- cov2cor(as.matrix(vcov(m)))
  out$corr_fe <- list(names = colnames(cr), values = unname(cr))
  txt <- capture.output(print(summary(m), correlation = TRUE))
  i <- grep("^Correlation of Fixed Effects:", txt)
  out$corr_printed <- if (length(i)) txt[i:length(txt)] else character(0)
  write_lt_ref(out, name)
}
lt_case("ham", "Informed.liking ~ Gender + Information * Product + (1 | Consumer) + (1 | Consumer:Product)", "ham")
lt_case("sleepgrp", "Reaction ~ Days * grp + phase + (Days | Subject)", "sleepgrp")
lt_case("sleepgrp3", "Reaction ~ grp * phase * Days + (1 | Subject)", "sleepgrp")
## the same model with sum-to-zero contrasts: lmerTest's Type III tests do not depend on the coding
lt_case("sleepgrp_sum", "Reaction ~ Days * grp + phase + (Days | Subject)", "sleepgrp",
        contrasts = "list(grp = 'contr.sum', phase = 'contr.sum')")
lt_case("hsb82", "mAch ~ sector * cses + meanses + (cses | school)", "hsb82", kr = FALSE)
## edge cases: no intercept, numeric terms only, a transformed variable in an interaction, an
## interaction without its main effects (one term: lmerTest falls back to Type I), a numeric
## variable with its interaction but not the factor's main effect
lt_case("sleepgrp_noint", "Reaction ~ 0 + grp + Days + (1 | Subject)", "sleepgrp")
lt_case("sleepgrp_quad", "Reaction ~ Days + I(Days^2) + (Days | Subject)", "sleepgrp",
        py_formula = "Reaction ~ Days + I(Days**2) + (Days | Subject)")
lt_case("sleepgrp_log", "Reaction ~ log(Days + 1) * grp + (1 | Subject)", "sleepgrp",
        py_formula = "Reaction ~ np.log(Days + 1) * grp + (1 | Subject)")
lt_case("sleepgrp_inter", "Reaction ~ grp:Days + (1 | Subject)", "sleepgrp")
lt_case("sleepgrp_nested", "Reaction ~ Days + Days:grp + (1 | Subject)", "sleepgrp")

## ranova of other random-effects forms: || (its 0 + Days term reduces to a (1 | Subject) that
## is already there: update.formula adds it once) and nesting a/b (two terms, b:a first)
ranova_case <- function(name, formula, data, py_formula = formula) {
  m <- eval(parse(text = sprintf("lmerTest::lmer(%s, data = %s)", formula, data)))
  write_lt_ref(list(name = name, data = paste0(data, ".csv"), formula = formula, py_formula = py_formula,
                    ranova = tab_rows(ranova(m)), ranova_complete = tab_rows(ranova(m, reduce.terms = FALSE))),
               name)
}
read_data("pastes")
ranova_case("ranova_uncorrelated", "Reaction ~ Days + (Days || Subject)", "sleepstudy")
ranova_case("ranova_nested", "strength ~ 1 + (1 | batch/cask)", "pastes")
## (lme4 warns that the full model failed to converge, max|grad| = 0.0165: its REML logLik is
## 1e-4 below the optimum; the test checks that)
ranova_case("ranova_two_slopes", "Reaction ~ Days * phase + (Days + phase | Subject)", "sleepgrp")

## ranova of a weighted fit with an offset in the formula (refits keep both)
read_data("sleepstudy_aug")
ra <- lmerTest::lmer(Reaction ~ Days + offset(off) + (Days | Subject), data = sleepstudy_aug, weights = w)
write_lt_ref(list(name = "ranova_weighted", data = "sleepstudy_aug.csv",
                  r_call = "lmer(Reaction ~ Days + offset(off) + (Days | Subject), data = sleepstudy_aug, weights = w)",
                  ranova = tab_rows(ranova(ra)), ranova_complete = tab_rows(ranova(ra, reduce.terms = FALSE))),
            "ranova_weighted")

## ---- 2. anova(lmer, lm) and nested grouping factors written differently ------------------------
m_lmer <- lmerTest::lmer(Reaction ~ Days + (1 | Subject), data = sleepstudy)
m_lm <- lm(Reaction ~ Days, data = sleepstudy)
write_lt_ref(list(name = "anova_lm", data = "sleepstudy.csv",
                  calls = list(m_lmer = "lmer(Reaction ~ Days + (1 | Subject), data = sleepstudy)",
                               m_lm = "lm(Reaction ~ Days, data = sleepstudy)"),
                  table = tab_rows(anova(m_lmer, m_lm))), "anova_lm")
read_data("cbpp")
g_glmer <- lme4::glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), data = cbpp, family = binomial)
g_glm <- glm(cbind(incidence, size - incidence) ~ period, data = cbpp, family = binomial)
write_lt_ref(list(name = "anova_glm", data = "cbpp.csv",
                  calls = list(g_glmer = "glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), data = cbpp, family = binomial)",
                               g_glm = "glm(cbind(incidence, size - incidence) ~ period, data = cbpp, family = binomial)"),
                  table = tab_rows(anova(g_glmer, g_glm))), "anova_glm")
n1 <- lme4::lmer(y ~ x + (1 | cid), data = nested3)
n2 <- lme4::lmer(y ~ x + (1 | region/cid), data = nested3)
write_lt_ref(list(name = "anova_nested", data = "nested3.csv",
                  note = "cid = paste(region, school, class, sep = '_'): unique class ids",
                  calls = list(n1 = "lmer(y ~ x + (1 | cid), data = nested3)",
                               n2 = "lmer(y ~ x + (1 | region/cid), data = nested3)"),
                  table = tab_rows(suppressMessages(anova(n1, n2)))), "anova_nested")
