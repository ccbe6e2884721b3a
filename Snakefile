# eroseg: adversarial robustness of semantic segmentation, end to end.
#
#   snakemake --profile workflow/profiles/default    # embedded synthetic default, 2 cores
#   snakemake --profile workflow/profiles/default --configfile config/tests.yaml
#   eroseg status                                   # progress and ETA of the running jobs
#   snakemake --report results/report.html   # one page with every table and figure
#
# The rules only call the `eroseg` CLI; all logic lives in the package.

from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless a config is given with --configfile: that one then
# replaces it entirely (Snakemake would otherwise merge the two, mixing methods and attacks).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
wildcard_constraints:
    family="|".join(TUNED_FAMILIES) if TUNED_FAMILIES else "x^",
    method="|".join(METHODS) if METHODS else "x^",
    seed=r"\d+",


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/external.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/min_norm.smk"
include: "workflow/rules/figures.smk"


# Cheap jobs that read JSON/CSV only: never submitted to a cluster.
localrules:
    all,
    aggregate,
    figures,


rule all:
    input:
        all_outputs(),
    default_target: True
