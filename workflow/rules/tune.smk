# Tuning: each attack family's free parameters (tuning.grids) are chosen on the
# validation split with the same budget for every family; evaluation settings and
# training methods marked `tuned: true` read the chosen parameters from the JSON.
# Changing one family's grid reruns that family's tuning and what reads it.


rule tune:
    input:
        models=[model_path(m, SEEDS[0]) for m in TUNE.get("models", [])],
        tune_list=PLAN.data_inputs(),
    output:
        tuning_path("{family}"),
    params:
        dataset=DATASET["name"],
        root=DATA_ROOT,
        split=DATASET["val_split"],
        attack=lambda wc: ATTACKS[wc.family]["attack"],
        base=lambda wc: js(PLAN.tuning_base_params(wc.family)),
        grid=lambda wc: js(TUNE["grids"][wc.family]),
        max_images=f"--max-images {TUNE['max_images']}" if TUNE.get("max_images") else "",
        batch_size=EVAL["batch_size"],
        split_lists=PLAN.split_lists_option(),
        inference=PLAN.inference_option(),
        code=CODE_EVAL,
    threads: config["resources"]["threads"]
    resources:
        gpu=1,
    benchmark:
        benchmark_path("tune", "{family}")
    log:
        log_path("tune/{family}"),
    conda:
        "../envs/eroseg.yml"
    shell:
        "\"$EROSEG_PYTHON\" -m eroseg tune --checkpoints {input.models:q} --dataset {params.dataset:q} --root {params.root:q}"
        " --split {params.split:q}{params.split_lists}{params.inference} --family {wildcards.family:q} --attack {params.attack:q}"
        " --attack-params {params.base:q} --grid {params.grid:q} {params.max_images}"
        " --batch-size {params.batch_size} --threads {threads} --out {output:q} > {log:q} 2>&1"
