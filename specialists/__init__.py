"""The paper's specialists (docs/method.md section 4): the generalist's confusable classes clustered into subsets
(`covariance`, `subsets`, `clustering`), one specialist per subset (`specialist`, `training`), eq. 5 to combine them
(`eq5`, `combiner`) and what they changed (`gains`). Built on `distill` and the job type of `ensembles`; never
imports Ray: the orchestration fans the specialists' jobs out."""
