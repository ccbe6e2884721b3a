# Evaluation: every trained model clean and under every attack setting the config
# asks for it, on the reported split (dataset.test_split). One job per model: the
# model and the data load once and each setting writes its own JSON (metrics plus
# per-image counts, so worst cases are computed in aggregation without attacking
# again); the job lists every file it wrote in the folder's manifest.json, and a folder that lacks one of
# them is refused (here when the workflow is parsed, and by aggregate) instead of being aggregated without
# it. Changing an attack setting reruns the evaluation of the models it
# applies to; changing a method retrains it and re-evaluates its models only.


rule evaluate:
    input:
        model=model_path("{method}", "{seed}"),
        tuned=lambda wc: PLAN.tuning_inputs_of_eval(wc.method, int(wc.seed)),
    output:
        directory(eval_dir("{method}", "{seed}")),
    params:
        dataset=DATASET["name"],
        root=DATA_ROOT,
        split=DATASET["test_split"],
        batch_size=EVAL["batch_size"],
        max_images=f"--max-images {EVAL['max_images']}" if EVAL.get("max_images") else "",
        settings=lambda wc: js(PLAN.evaluation_settings(wc.method, int(wc.seed))),
        manifest=lambda wc, output: f"{output[0]}/{EVAL_MANIFEST}",
        code=CODE_EVAL,
    threads: config["resources"]["threads"]
    resources:
        gpu=1,
    benchmark:
        benchmark_path("evaluate", "{method}_seed{seed}")
    log:
        log_path("eval/{method}_seed{seed}"),
    conda:
        "../envs/eroseg.yml"
    shell:
        "\"$EROSEG_PYTHON\" -m eroseg evaluate --checkpoint {input.model:q} --dataset {params.dataset:q} --root {params.root:q}"
        " --split {params.split:q} --batch-size {params.batch_size} {params.max_images} --seed {wildcards.seed}"
        " --settings {params.settings:q} --manifest {params.manifest:q} --threads {threads} > {log:q} 2>&1"


rule samples:
    input:
        model=model_path(EVAL["samples"]["method"], SEEDS[0]),
    output:
        npz=samples_path(),
        json=samples_path(".json"),
    params:
        dataset=DATASET["name"],
        root=DATA_ROOT,
        split=DATASET["test_split"],
        n=EVAL["samples"]["n"],
        attack=ATTACKS[EVAL["samples"]["attack"]]["attack"],
        setting=EVAL["samples"]["attack"],
        attack_params=js(PLAN.samples_params()),
        code=CODE_EVAL,
    threads: config["resources"]["threads"]
    resources:
        gpu=1,
    log:
        log_path("samples"),
    conda:
        "../envs/eroseg.yml"
    shell:
        "\"$EROSEG_PYTHON\" -m eroseg evaluate --checkpoint {input.model:q} --dataset {params.dataset:q} --root {params.root:q}"
        " --split {params.split:q} --batch-size {params.n} --max-images {params.n} --seed 0"
        " --attack {params.attack:q} --attack-params {params.attack_params:q} --setting {params.setting:q}"
        " --samples {output.npz:q} --samples-n {params.n} --record-steps"
        " --threads {threads} --out {output.json:q} > {log:q} 2>&1"
