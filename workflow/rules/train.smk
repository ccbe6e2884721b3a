# Training: every method in the config, for every seed. A method's params are
# only its own attack and the shared settings, so changing one method's
# parameter retrains that method only.


rule train:
    input:
        manifest=PLAN.manifest_path(),
        tuned=lambda wc: [training_tuning_file(wc.method)] if training_tuning_file(wc.method) else [],
        tune_list=PLAN.data_inputs(),
    output:
        model=model_path("{method}", "{seed}"),
        log=PLAN.train_log_path("{method}", "{seed}"),
    params:
        module=TRAIN_MODULE,
        dataset=DATASET["name"],
        root=DATA_ROOT,
        train_split=DATASET["train_split"],
        val_split=DATASET["val_split"],
        model=js(config["model"]),
        train=js(config["train"]),
        attack=lambda wc: training_attack(wc.method)[0] or "none",
        attack_params=lambda wc: js(training_attack(wc.method)[1]),
        objective=lambda wc: js(training_objective(wc.method)),
        params_file=lambda wc: f"--attack-params-file {shlex.quote(training_tuning_file(wc.method))}" if training_tuning_file(wc.method) else "",
        robust_eps=config["adversarial_training"]["eps"],
        split_lists=PLAN.split_lists_option(),
        code=CODE_TRAIN,
    threads: config["resources"]["threads"]
    resources:
        gpu=config["resources"]["gpus_per_train"],
    benchmark:
        benchmark_path("train", "{method}_seed{seed}")
    log:
        log_path("train/{method}_seed{seed}"),
    conda:
        "../envs/eroseg.yml"
    shell:
        "\"$EROSEG_PYTHON\" {params.module} train --dataset {params.dataset:q} --root {params.root:q} --train-split {params.train_split:q}"
        " --val-split {params.val_split:q}{params.split_lists} --model {params.model:q} --train {params.train:q}"
        " --method {wildcards.method:q} --attack {params.attack:q} --attack-params {params.attack_params:q} {params.params_file}"
        " --objective {params.objective:q} --robust-eps {params.robust_eps:q} --seed {wildcards.seed} --threads {threads}"
        " --out {output.model:q} --log {output.log:q} > {log:q} 2>&1"
