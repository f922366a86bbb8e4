## Helpers shared by the reference scripts (sourced from the repository root).
suppressPackageStartupMessages(library(jsonlite))

## JSON with full precision (digits = NA); NULL and NA become null.
write_json_file <- function(x, path, auto_unbox = TRUE) {
  txt <- toJSON(x, digits = NA, auto_unbox = auto_unbox, pretty = TRUE, null = "null", na = "null")
  writeLines(txt, path, useBytes = TRUE)
}
