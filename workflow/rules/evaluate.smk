# Evaluation: every trained model clean and under every attack setting the config
# asks for it, on the reported split (dataset.test_split). One job per model (or, with
# evaluation.shards: N, N jobs merged into the same folder): the model and the data load once and each setting writes its own JSON (metrics plus
# per-image counts, so worst cases are computed in aggregation without attacking
# again); the job lists every file it wrote in the folder's manifest.json, and a folder that lacks one of
# them is refused (here when the workflow is parsed, and by aggregate) instead of being aggregated without
# it. Changing an attack setting reruns the evaluation of the models it
# applies to; changing a method retrains it and re-evaluates its models only.


if PLAN.shards == 1:

    rule evaluate:
        input:
            model=model_path("{method}", "{seed}"),
            tuned=lambda wc: PLAN.tuning_inputs_of_eval(wc.method, int(wc.seed)),
            tune_list=PLAN.data_inputs(),
        output:
            directory(eval_dir("{method}", "{seed}")),
        params:
            dataset=DATASET["name"],
            root=DATA_ROOT,
            split=DATASET["test_split"],
            batch_size=EVAL["batch_size"],
            max_images=f"--max-images {EVAL['max_images']}" if EVAL.get("max_images") else "",
            split_lists=PLAN.split_lists_option(),
            inference=PLAN.inference_option(),
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
            " --split {params.split:q}{params.split_lists}{params.inference} --batch-size {params.batch_size} {params.max_images} --seed {wildcards.seed}"
            " --settings {params.settings:q} --manifest {params.manifest:q} --threads {threads} > {log:q} 2>&1"

else:
    # evaluation.shards > 1: each model's evaluation runs as N jobs over ranges of whole batches of the split
    # (each its own GPU slot or SLURM job, its own folder, rerun alone if lost), merged exactly into the
    # model's folder (eroseg.shards), which aggregate and figures read as they read one job's.

    rule evaluate_shard:
        input:
            model=model_path("{method}", "{seed}"),
            tuned=lambda wc: PLAN.tuning_inputs_of_eval(wc.method, int(wc.seed)),
            tune_list=PLAN.data_inputs(),
        output:
            directory(PLAN.eval_shard_dir("{method}", "{seed}", "{shard}")),
        wildcard_constraints:
            shard=r"\d+",
        params:
            dataset=DATASET["name"],
            root=DATA_ROOT,
            split=DATASET["test_split"],
            batch_size=EVAL["batch_size"],
            max_images=f"--max-images {EVAL['max_images']}" if EVAL.get("max_images") else "",
            split_lists=PLAN.split_lists_option(),
            inference=PLAN.inference_option(),
            shard=lambda wc: f"{wc.shard}/{PLAN.shards}",
            settings=lambda wc: js(PLAN.shard_settings(wc.method, int(wc.seed), int(wc.shard))),
            manifest=lambda wc, output: f"{output[0]}/{EVAL_MANIFEST}",
            code=CODE_EVAL,
        threads: config["resources"]["threads"]
        resources:
            gpu=1,
        benchmark:
            benchmark_path("evaluate_shard", f"{{method}}_seed{{seed}}_shard{{shard}}of{PLAN.shards}")
        log:
            log_path(f"eval/{{method}}_seed{{seed}}_shard{{shard}}of{PLAN.shards}"),
        conda:
            "../envs/eroseg.yml"
        shell:
            "\"$EROSEG_PYTHON\" -m eroseg evaluate --checkpoint {input.model:q} --dataset {params.dataset:q} --root {params.root:q}"
            " --split {params.split:q}{params.split_lists}{params.inference} --batch-size {params.batch_size} {params.max_images} --seed {wildcards.seed}"
            " --shard {params.shard:q} --settings {params.settings:q} --manifest {params.manifest:q} --threads {threads} > {log:q} 2>&1"

    rule merge_eval:
        input:
            shards=lambda wc: PLAN.eval_shard_dirs(wc.method, int(wc.seed)),
        output:
            directory(eval_dir("{method}", "{seed}")),
        log:
            log_path("eval/{method}_seed{seed}_merge"),
        conda:
            "../envs/eroseg.yml"
        shell:
            "\"$EROSEG_PYTHON\" -m eroseg merge-shards --shards {input.shards:q} --out-dir {output:q} > {log:q} 2>&1"


rule samples:
    input:
        model=model_path(EVAL["samples"]["method"], SEEDS[0]),
        tune_list=PLAN.data_inputs(),
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
        split_lists=PLAN.split_lists_option(),
        inference=PLAN.inference_option(),
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
        " --split {params.split:q}{params.split_lists}{params.inference} --batch-size {params.n} --max-images {params.n} --seed 0"
        " --attack {params.attack:q} --attack-params {params.attack_params:q} --setting {params.setting:q}"
        " --samples {output.npz:q} --samples-n {params.n} --record-steps"
        " --threads {threads} --out {output.json:q} > {log:q} 2>&1"
