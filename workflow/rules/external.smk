# Pretrained models of your own (methods.<name>.external): no training. The factory builds the model, its
# weights file is loaded and the result is written as an eroseg checkpoint at the place a trained model's
# would be, which the evaluation, samples and tuning rules then read like any other. Changing the entry,
# the weights file or a factory given as a .py file reimports the model and reruns what reads it.
# The factory is code that runs (a module imported, a file executed): see docs/own_model.md.

CODE_IMPORT = source_hash("external.py", "models.py", "io.py")

if EXTERNAL:

    ruleorder: import_model > train

    rule import_model:
        input:
            weights=lambda wc: [EXTERNAL[wc.method]["weights"]] if "weights" in EXTERNAL[wc.method] else [],
            factory=lambda wc: [factory_file(EXTERNAL[wc.method]["factory"])] if factory_file(EXTERNAL[wc.method]["factory"]) else [],
        output:
            model_path("{method}", "{seed}"),
        wildcard_constraints:
            method="|".join(EXTERNAL),
        params:
            factory=lambda wc: EXTERNAL[wc.method]["factory"],
            weights=lambda wc: EXTERNAL[wc.method].get("weights", ""),
            options=lambda wc: js({k: v for k, v in EXTERNAL[wc.method].items() if k not in ("factory", "weights")}),
            dataset=DATASET["name"],
            config_key=lambda wc: f"methods.{wc.method}.external",
            code=CODE_IMPORT,
        log:
            log_path("import/{method}_seed{seed}"),
        conda:
            "../envs/eroseg.yml"
        shell:
            "\"$EROSEG_PYTHON\" -m eroseg import-model --factory {params.factory:q} --weights {params.weights:q}"
            " --options {params.options:q} --dataset {params.dataset:q} --method {wildcards.method:q} --seed {wildcards.seed}"
            " --config-key {params.config_key:q} --out {output:q} > {log:q} 2>&1"
