# Minimal-norm attacks (evaluation.min_norm; eroseg.minnorm through adv-lib): one job per model and attack
# setting attacks every image once and keeps, per image, the smallest norm found, and per eps of the grid
# the per-image counts of the perturbation scaled to eps. The aggregate and figures rules read the records
# (the min_norm table, the robustness curve, one more worst-case candidate at the headline eps).

CODE_MIN_NORM = source_hash("minnorm/*.py", "data/*.py", "io.py", "models.py", "metrics.py", "numbers.py",
                            "external.py", "objects.py")
# What the min_norm table, the curve and the worst-case candidate read (the aggregate and figures rules).
CODE_MIN_NORM_REPORT = source_hash("minnorm/records.py", "minnorm/tables.py")


rule min_norm:
    wildcard_constraints:
        min_norm_setting="|".join(PLAN.min_norm["attacks"]) if PLAN.min_norm else "x^",
    input:
        model=model_path("{method}", "{seed}"),
    output:
        PLAN.min_norm_path("{method}", "{seed}", "{min_norm_setting}"),
    params:
        dataset=DATASET["name"],
        root=DATA_ROOT,
        split=DATASET["test_split"],
        min_norm_options=lambda wc: PLAN.min_norm_options(wc.min_norm_setting),  # each word quoted by the plan
        code=CODE_MIN_NORM,
    threads: config["resources"]["threads"]
    resources:
        gpu=1,
    benchmark:
        benchmark_path("min_norm", "{method}_seed{seed}_{min_norm_setting}")
    log:
        log_path("min_norm/{method}_seed{seed}_{min_norm_setting}"),
    conda:
        "../envs/eroseg.yml"
    shell:
        "\"$EROSEG_PYTHON\" -m eroseg min-norm --checkpoint {input.model:q} --dataset {params.dataset:q}"
        " --root {params.root:q} --split {params.split:q} {params.min_norm_options} --seed {wildcards.seed}"
        " --threads {threads} --out {output:q} > {log:q} 2>&1"
