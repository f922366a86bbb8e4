## R reference values for estimated marginal means (emmeans) of LMM, GLMM and clmm fits
## (tests/test_emmeans.py).
##
## Run from the repository root:   Rscript tools/r_reference/emmeans_reference.R
##
## Writes tests/reference/emmeans/NAME.json.  Uses the stored datasets tests/data/ham.csv
## (lmerTest's `ham`), cbpp.csv, grouseticks.csv, pois_offset.csv and wine.csv as they are; no random numbers, so two runs give
## the same files.  Each JSON holds the fit (fixef, sigma or thresholds, loglik) and, under
## "tables", every emmeans / contrast table as as.data.frame(summary(...)) rows, with the R call
## that made it.
##
## Packages: lme4, lmerTest, pbkrtest, ordinal, emmeans (Debian: r-cran-emmeans), jsonlite.

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(pbkrtest)
  library(ordinal)
  library(emmeans)
})
source("tools/r_reference/common.R")
REF_DIR <- "tests/reference/emmeans"
start_script("emmeans_reference.R", REF_DIR)
R_VERSIONS <- r_versions(c("lme4", "lmerTest", "pbkrtest", "ordinal", "emmeans"))
emm_options(pbkrtest.limit = 1e5, lmerTest.limit = 1e5)

## an emmeans / contrast table as rows, with the call (text) that made it
tab <- function(call) {
  x <- eval(parse(text = call))
  df <- as.data.frame(summary(x))
  for (col in names(df)) if (is.factor(df[[col]])) df[[col]] <- as.character(df[[col]])
  list(call = call, rows = df)
}
tables <- function(calls) setNames(lapply(calls, tab), names(calls))

## ---- 1. LMM: lmerTest's ham, two factors with their interaction, a factor and a covariate
read_data("ham")
form <- "Informed.liking ~ Product * Information + Gender + Age + (1 | Consumer) + (1 | Consumer:Product)"
m <- lmer(as.formula(form), data = ham)
KR <- "lmer.df = 'kenward-roger'"
SA <- "lmer.df = 'satterthwaite'"
calls <- c(
  product_kr = sprintf("emmeans(m, ~ Product, %s)", KR),
  product_satt = sprintf("emmeans(m, ~ Product, %s)", SA),
  product_kr_pairs_tukey = sprintf("pairs(emmeans(m, ~ Product, %s), adjust = 'tukey')", KR),
  product_kr_pairs_holm = sprintf("pairs(emmeans(m, ~ Product, %s), adjust = 'holm')", KR),
  product_kr_pairs_bonferroni = sprintf("pairs(emmeans(m, ~ Product, %s), adjust = 'bonferroni')", KR),
  product_kr_pairs_none = sprintf("pairs(emmeans(m, ~ Product, %s), adjust = 'none')", KR),
  product_satt_pairs_tukey = sprintf("pairs(emmeans(m, ~ Product, %s), adjust = 'tukey')", SA),
  product_by_info_kr = sprintf("emmeans(m, ~ Product | Information, %s)", KR),
  product_by_info_satt = sprintf("emmeans(m, ~ Product | Information, %s)", SA),
  product_by_info_kr_pairs_tukey = sprintf("pairs(emmeans(m, ~ Product | Information, %s))", KR),
  product_by_info_satt_pairs_holm = sprintf("pairs(emmeans(m, ~ Product | Information, %s), adjust = 'holm')", SA),
  product_info_kr = sprintf("emmeans(m, ~ Product * Information, %s)", KR),
  product_info_kr_pairs_tukey = sprintf("pairs(emmeans(m, ~ Product * Information, %s))", KR),
  info_age40_kr = sprintf("emmeans(m, ~ Information, at = list(Age = 40), %s)", KR),
  info_by_age_kr = sprintf("emmeans(m, ~ Information | Age, at = list(Age = c(30, 50)), %s)", KR),
  gender_kr_level90 = sprintf("emmeans(m, ~ Gender, level = 0.9, %s)", KR),
  product_kr_revpairwise_bonf = sprintf("contrast(emmeans(m, ~ Product, %s), 'revpairwise', adjust = 'bonferroni')", KR),
  product_kr_trtvsctrl_holm = sprintf("contrast(emmeans(m, ~ Product, %s), 'trt.vs.ctrl', adjust = 'holm')", KR),
  product_kr_trtvsctrl_dunnettx = sprintf("contrast(emmeans(m, ~ Product, %s), 'trt.vs.ctrl')", KR),
  product_kr_pairs_sidak = sprintf("pairs(emmeans(m, ~ Product, %s), adjust = 'sidak')", KR)
)
write_ref(list(name = "ham", data = "ham.csv", formula = form, r_call = sprintf("lmer(%s, data = ham)", form),
               fixef = as.list(fixef(m)), sigma = sigma(m), loglik = as.numeric(logLik(m)),
               age_mean = mean(ham$Age), tables = tables(calls)),
          "ham", REF_DIR, versions = R_VERSIONS)

## ---- 2. binomial GLMM: cbpp, link and response scale
read_data("cbpp")
gform <- "cbind(incidence, size - incidence) ~ period + (1 | herd)"
## lme4's default PIRLS tolerance leaves its finite-difference Hessian (so vcov) 0.5 % off here;
## tolPwrss = 1e-12 gives the exact Laplace objective (as tests/reference/glmm's lme4_tight)
g <- glmer(as.formula(gform), data = cbpp, family = binomial,
           control = glmerControl(tolPwrss = 1e-12))
calls <- c(
  period_link = "emmeans(g, ~ period)",
  period_response = "emmeans(g, ~ period, type = 'response')",
  period_link_pairs_tukey = "pairs(emmeans(g, ~ period))",
  period_link_pairs_holm = "pairs(emmeans(g, ~ period), adjust = 'holm')",
  period_response_pairs_tukey = "pairs(emmeans(g, ~ period, type = 'response'))",
  period_response_trtvsctrl_bonf = "contrast(emmeans(g, ~ period, type = 'response'), 'trt.vs.ctrl', adjust = 'bonferroni')",
  period_regrid = "regrid(emmeans(g, ~ period))",
  period_regrid_pairs = "pairs(regrid(emmeans(g, ~ period)))"
)
write_ref(list(name = "cbpp", data = "cbpp.csv", formula = gform, family = "binomial",
               r_call = sprintf("glmer(%s, data = cbpp, family = binomial, control = glmerControl(tolPwrss = 1e-12))", gform),
               fixef = as.list(fixef(g)), loglik = as.numeric(logLik(g)), tables = tables(calls)),
          "cbpp", REF_DIR, versions = R_VERSIONS)

## ---- 2b. Poisson GLMMs: a factor (rate, ratios) and an offset term (at the covariate mean)
read_data("grouseticks")
pform <- "TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)"
pg <- glmer(as.formula(pform), data = grouseticks, family = poisson,
            control = glmerControl(tolPwrss = 1e-12))
calls <- c(
  year_response = "emmeans(pg, ~ YEAR, type = 'response')",
  year_response_pairs = "pairs(emmeans(pg, ~ YEAR, type = 'response'))",
  year_link_at_height = "emmeans(pg, ~ YEAR | cHEIGHT, at = list(cHEIGHT = c(-10, 10)))"
)
write_ref(list(name = "grouseticks", data = "grouseticks.csv", formula = pform, family = "poisson",
               r_call = sprintf("glmer(%s, data = grouseticks, family = poisson, control = glmerControl(tolPwrss = 1e-12))", pform),
               fixef = as.list(fixef(pg)), loglik = as.numeric(logLik(pg)), tables = tables(calls)),
          "grouseticks", REF_DIR, versions = R_VERSIONS)

read_data("pois_offset")
oform <- "y ~ x + offset(log(t)) + (1 | g)"
po <- glmer(as.formula(oform), data = pois_offset, family = poisson,
            control = glmerControl(tolPwrss = 1e-12))
calls <- c(x_at_response = "emmeans(po, ~ x, at = list(x = c(0, 0.5)), type = 'response')")
write_ref(list(name = "pois_offset", data = "pois_offset.csv", formula = oform,
               py_formula = "y ~ x + offset(np.log(t)) + (1 | g)", family = "poisson",
               r_call = sprintf("glmer(%s, data = pois_offset, family = poisson, control = glmerControl(tolPwrss = 1e-12))", oform),
               fixef = as.list(fixef(po)), loglik = as.numeric(logLik(po)), tables = tables(calls)),
          "pois_offset", REF_DIR, versions = R_VERSIONS)

## ---- 3. clmm: wine, latent scale, category probabilities and mean class
read_data("wine")
cform <- "rating ~ temp * contact + (1 | judge)"
cm <- clmm(as.formula(cform), data = wine)
calls <- c(
  temp_latent = "emmeans(cm, ~ temp, mode = 'latent')",
  temp_by_contact_latent = "emmeans(cm, ~ temp | contact, mode = 'latent')",
  temp_by_contact_latent_pairs = "pairs(emmeans(cm, ~ temp | contact, mode = 'latent'))",
  temp_contact_latent_pairs_holm = "pairs(emmeans(cm, ~ temp * contact, mode = 'latent'), adjust = 'holm')",
  rating_by_temp_prob = "emmeans(cm, ~ rating | temp, mode = 'prob')",
  temp_by_rating_prob_pairs = "pairs(emmeans(cm, ~ temp | rating, mode = 'prob'))",
  contact_prob = "emmeans(cm, ~ contact, mode = 'prob')",
  temp_contact_meanclass = "emmeans(cm, ~ temp * contact, mode = 'mean.class')",
  temp_meanclass_pairs = "pairs(emmeans(cm, ~ temp, mode = 'mean.class'))"
)
write_ref(list(name = "wine", data = "wine.csv", formula = cform,
               r_call = sprintf("clmm(%s, data = wine)", cform),
               beta = as.list(cm$beta), thresholds = as.list(cm$alpha),
               loglik = as.numeric(logLik(cm)), tables = tables(calls)),
          "wine", REF_DIR, versions = R_VERSIONS)

## ---- 4. LMM: emmeans' weights on an unbalanced subset of ham (Product x Information x Gender
## counts no longer proportional, so "equal", "proportional", "outer", "cells" and "flat" differ)
ham_u <- subset(ham, !(Information == "1" & Gender == "2" & Product %in% c("1", "2") &
                       as.integer(as.character(Consumer)) %% 2 == 1))
mu <- lmer(as.formula(form), data = ham_u)
form2 <- "Informed.liking ~ Product + Information * Gender + (1 | Consumer)"
mu2 <- lmer(as.formula(form2), data = ham_u)
calls <- c(
  product_equal = sprintf("emmeans(mu, ~ Product, %s)", KR),
  product_proportional = sprintf("emmeans(mu, ~ Product, weights = 'proportional', %s)", KR),
  product_outer = sprintf("emmeans(mu, ~ Product, weights = 'outer', %s)", KR),
  product_cells = sprintf("emmeans(mu, ~ Product, weights = 'cells', %s)", KR),
  product_flat = sprintf("emmeans(mu, ~ Product, weights = 'flat', %s)", KR),
  product_numeric = sprintf("emmeans(mu, ~ Product, weights = c(1, 2, 3, 4), %s)", KR),
  info_by_gender_cells = sprintf("emmeans(mu, ~ Information | Gender, weights = 'cells', %s)", SA),
  product_age_proportional = sprintf("emmeans(mu, ~ Product, at = list(Age = c(30, 50)), weights = 'proportional', %s)", KR),
  product_proportional_pairs = sprintf("pairs(emmeans(mu, ~ Product, weights = 'proportional', %s), adjust = 'holm')", KR),
  product_cells_pairs = sprintf("pairs(emmeans(mu, ~ Product, weights = 'cells', %s))", SA),
  ## Information x Gender in the model: "outer" (product of the margins) and "proportional"
  ## (the joint counts) now differ
  product_outer_ig = sprintf("emmeans(mu2, ~ Product, weights = 'outer', %s)", KR),
  product_proportional_ig = sprintf("emmeans(mu2, ~ Product, weights = 'proportional', %s)", KR)
)
write_ref(list(name = "ham_unbalanced", data = "ham.csv", formula = form, formula2 = form2,
               subset = "!(Information == '1' & Gender == '2' & Product %in% c('1', '2') & Consumer odd)",
               r_call = sprintf("lmer(%s, data = ham_u)", form), nobs = nrow(ham_u),
               fixef = as.list(fixef(mu)), sigma = sigma(mu), loglik = as.numeric(logLik(mu)),
               tables = tables(calls)),
          "ham_unbalanced", REF_DIR, versions = R_VERSIONS)

## ---- 5. LMM with a transformed response: type = "response" (back-transformed means, delta-
## method SEs, back-transformed limits; ratios for log) and regrid() (means and contrasts on the
## response scale)
tform <- function(f) sprintf("%s(Informed.liking) ~ Product * Information + Gender + Age + (1 | Consumer) + (1 | Consumer:Product)", f)
ml <- lmer(as.formula(tform("log")), data = ham)
ms <- lmer(as.formula(tform("sqrt")), data = ham)
m10 <- lmer(as.formula(tform("log10")), data = ham)
calls <- c(
  log_product_link = sprintf("emmeans(ml, ~ Product, %s)", KR),
  log_product_response = sprintf("emmeans(ml, ~ Product, type = 'response', %s)", KR),
  log_product_response_pairs = sprintf("pairs(emmeans(ml, ~ Product, type = 'response', %s))", KR),
  log_product_regrid = sprintf("regrid(emmeans(ml, ~ Product, %s))", KR),
  log_product_regrid_pairs = sprintf("pairs(regrid(emmeans(ml, ~ Product, %s)), adjust = 'holm')", KR),
  log_info_by_gender_response_satt = sprintf("emmeans(ml, ~ Information | Gender, type = 'response', %s)", SA),
  sqrt_product_response = sprintf("emmeans(ms, ~ Product, type = 'response', %s)", KR),
  sqrt_product_response_pairs = sprintf("pairs(emmeans(ms, ~ Product, type = 'response', %s))", KR),
  sqrt_product_regrid = sprintf("regrid(emmeans(ms, ~ Product, %s))", KR),
  log10_product_response = sprintf("emmeans(m10, ~ Product, type = 'response', %s)", KR),
  log10_product_response_pairs = sprintf("pairs(emmeans(m10, ~ Product, type = 'response', %s), adjust = 'none')", KR),
  ## means with different df: a regridded contrast takes the smaller df of its two means
  log_info_gender_regrid_pairs = sprintf("pairs(regrid(emmeans(ml, ~ Information * Gender, %s)), adjust = 'none')", SA)
)
write_ref(list(name = "ham_transformed", data = "ham.csv",
               formulas = list(log = tform("log"), sqrt = tform("sqrt"), log10 = tform("log10")),
               fixef = list(log = as.list(fixef(ml)), sqrt = as.list(fixef(ms)), log10 = as.list(fixef(m10))),
               loglik = list(log = as.numeric(logLik(ml)), sqrt = as.numeric(logLik(ms)),
                             log10 = as.numeric(logLik(m10))),
               tables = tables(calls)),
          "ham_transformed", REF_DIR, versions = R_VERSIONS)

## ---- 6. a numeric 0/1 covariate: emmeans' default cov.keep = "2" keeps it with its two values
## (averaged over like a factor) instead of putting it at its mean; cov.keep = character(0)
## puts it at its mean
ham$g01 <- as.numeric(ham$Gender == "2")
kform <- "Informed.liking ~ Product + g01 + Age + (1 | Consumer)"
mk <- lmer(as.formula(kform), data = ham)
calls <- c(
  product_kr = sprintf("emmeans(mk, ~ Product, %s)", KR),
  g01_kr = sprintf("emmeans(mk, ~ g01, %s)", KR),
  g01_pairs = sprintf("pairs(emmeans(mk, ~ g01, %s))", KR),
  product_cells = sprintf("emmeans(mk, ~ Product, weights = 'cells', %s)", KR),
  product_mean = sprintf("emmeans(mk, ~ Product, cov.keep = character(0), %s)", KR)
)
write_ref(list(name = "ham_binary_covariate", data = "ham.csv", formula = kform,
               derived = "g01 = as.numeric(Gender == '2')",
               r_call = sprintf("lmer(%s, data = ham)", kform), g01_mean = mean(ham$g01),
               fixef = as.list(fixef(mk)), loglik = as.numeric(logLik(mk)), tables = tables(calls)),
          "ham_binary_covariate", REF_DIR, versions = R_VERSIONS)
