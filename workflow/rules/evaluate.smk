# Evaluation: every trained model clean and under every attack setting the
# config lists; one JSON per job (metrics plus per-image counts, so the worst
# case is computed in aggregation without attacking again).


rule evaluate_clean:
    input:
        model=f"{OUT}/models/{{method}}/seed{{seed}}/model.pt",
    output:
        f"{OUT}/eval/{{method}}/seed{{seed}}/clean.json",
    params:
        dataset=DATASET["name"],
        root=DATA_ROOT,
        split=EVAL["split"],
        batch_size=EVAL["batch_size"],
        max_images=f"--max-images {EVAL['max_images']}" if EVAL.get("max_images") else "",
        code=CODE_EVAL,
    threads: config["resources"]["threads"]
    resources:
        gpu=1,
    log:
        f"{OUT}/logs/eval/{{method}}_seed{{seed}}_clean.log",
    shell:
        "eroseg evaluate --checkpoint {input.model} --dataset {params.dataset} --root {params.root:q}"
        " --split {params.split} --batch-size {params.batch_size} {params.max_images} --seed {wildcards.seed}"
        " --threads {threads} --out {output} > {log} 2>&1"


rule evaluate_attack:
    input:
        model=f"{OUT}/models/{{method}}/seed{{seed}}/model.pt",
    output:
        f"{OUT}/eval/{{method}}/seed{{seed}}/{{attack}}/eps{{eps}}_steps{{steps}}.json",
    params:
        dataset=DATASET["name"],
        root=DATA_ROOT,
        split=EVAL["split"],
        batch_size=EVAL["batch_size"],
        max_images=f"--max-images {EVAL['max_images']}" if EVAL.get("max_images") else "",
        attack=lambda wc: ATTACKS[wc.attack]["attack"],
        attack_params=lambda wc: js(attack_params(wc.attack, wc.eps, wc.steps)),
        code=CODE_EVAL,
    threads: config["resources"]["threads"]
    resources:
        gpu=1,
    log:
        f"{OUT}/logs/eval/{{method}}_seed{{seed}}_{{attack}}_eps{{eps}}_steps{{steps}}.log",
    shell:
        "eroseg evaluate --checkpoint {input.model} --dataset {params.dataset} --root {params.root:q}"
        " --split {params.split} --batch-size {params.batch_size} {params.max_images} --seed {wildcards.seed}"
        " --attack {params.attack} --attack-params {params.attack_params:q} --name {wildcards.attack}"
        " --threads {threads} --out {output} > {log} 2>&1"


rule samples:
    input:
        model=model_path(EVAL["samples"]["method"], SEEDS[0]),
    output:
        npz=samples_path(),
        json=samples_path().replace(".npz", ".json"),
    params:
        dataset=DATASET["name"],
        root=DATA_ROOT,
        split=EVAL["split"],
        n=EVAL["samples"]["n"],
        attack=ATTACKS[EVAL["samples"]["attack"]]["attack"],
        attack_params=js(attack_params(EVAL["samples"]["attack"], eps_tag(HEAD_EPS), HEAD_STEPS)),
        code=CODE_EVAL,
    threads: config["resources"]["threads"]
    resources:
        gpu=1,
    log:
        f"{OUT}/logs/samples.log",
    shell:
        "eroseg evaluate --checkpoint {input.model} --dataset {params.dataset} --root {params.root:q}"
        " --split {params.split} --batch-size {params.n} --max-images {params.n} --seed 0"
        " --attack {params.attack} --attack-params {params.attack_params:q} --name {params.attack}"
        " --samples {output.npz} --samples-n {params.n} --record-steps"
        " --threads {threads} --out {output.json} > {log} 2>&1"
