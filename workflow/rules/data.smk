# Data: generate the embedded synthetic dataset (if configured), then validate
# the dataset and write its manifest and class frequencies.


if SYNTH:

    rule synthesize:
        output:
            directory(DATA_ROOT),
        params:
            s=config["dataset"]["synthetic"],
            code=CODE_DATA,
        log:
            f"{OUT}/logs/synthesize.log",
        shell:
            "eroseg synthesize --root {output} --n-train {params.s[n_train]} --n-val {params.s[n_val]}"
            " --height {params.s[height]} --width {params.s[width]} --seed {params.s[seed]} > {log} 2>&1"


rule prepare:
    input:
        DATA_ROOT if SYNTH else [],
    output:
        manifest=f"{OUT}/data/manifest.csv",
        frequencies=f"{OUT}/data/class_frequencies.csv",
    params:
        dataset=DATASET["name"],
        root=DATA_ROOT,
        splits=[DATASET["train_split"], DATASET["val_split"]],
        code=CODE_DATA,
    log:
        f"{OUT}/logs/prepare.log",
    shell:
        "eroseg prepare --dataset {params.dataset} --root {params.root:q} --splits {params.splits}"
        " --manifest {output.manifest} --frequencies {output.frequencies} > {log} 2>&1"
