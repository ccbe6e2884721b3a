# Data: generate the embedded synthetic dataset (if configured), then validate
# the dataset and write its manifest and class frequencies; with dataset.tune_size,
# first carve the `tune` list out of the training split (eroseg.data.splits).


if SYNTH:

    rule synthesize:
        output:
            directory(DATA_ROOT),
        params:
            # Scalars, not the dict: params compare by their string form, which for a
            # dict depends on key order (a YAML dump reorders keys).
            n_train=config["dataset"]["synthetic"]["n_train"],
            n_val=config["dataset"]["synthetic"]["n_val"],
            n_test=config["dataset"]["synthetic"]["n_test"],
            height=config["dataset"]["synthetic"]["height"],
            width=config["dataset"]["synthetic"]["width"],
            seed=config["dataset"]["synthetic"]["seed"],
            code=CODE_DATA,
        log:
            log_path("synthesize"),
        conda:
            "../envs/eroseg.yml"
        shell:
            "\"$EROSEG_PYTHON\" -m eroseg synthesize --root {output:q} --n-train {params.n_train} --n-val {params.n_val} --n-test {params.n_test}"
            " --height {params.height} --width {params.width} --seed {params.seed} > {log:q} 2>&1"


rule prepare:
    input:
        DATA_ROOT if SYNTH else [],
    output:
        manifest=PLAN.manifest_path(),
        frequencies=PLAN.frequencies_path(),
        tune_list=PLAN.data_inputs(),
    params:
        dataset=DATASET["name"],
        root=lambda w, input: input[0] if SYNTH else DATA_ROOT,
        splits=sorted({DATASET["train_split"], DATASET["val_split"], DATASET["test_split"]}),
        tune=PLAN.prepare_tune_option(),
        code=CODE_DATA,
    log:
        log_path("prepare"),
    conda:
        "../envs/eroseg.yml"
    shell:
        "\"$EROSEG_PYTHON\" -m eroseg prepare --dataset {params.dataset:q} --root {params.root:q} --splits {params.splits:q}"
        " --manifest {output.manifest:q} --frequencies {output.frequencies:q}{params.tune} > {log:q} 2>&1"
