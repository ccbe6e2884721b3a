# Tables and figures: cheap local jobs that read JSON/CSV/NPZ only (no model is loaded).


rule aggregate:
    input:
        evals=all_eval_dirs(),
        tuning=[tuning_path(f) for f in TUNED_FAMILIES],
        benchmarks=PLAN.benchmark_files(),
        min_norm=PLAN.min_norm_files(),  # named in the spec (its min_norm block); none without evaluation.min_norm
    output:
        report_outputs(PLAN.report_tables(), PLAN.tables_dir(), TABLE_FORMATS, "Tables", "table"),
    params:
        spec=flow(PLAN.aggregate_spec()),
        out_dir=lambda w, output: os.path.dirname(output[0]),
        code=CODE_AGG,
        code_min_norm=CODE_MIN_NORM_REPORT,
    log:
        log_path("aggregate"),
    conda:
        "../envs/eroseg.yml"
    shell:
        "\"$EROSEG_PYTHON\" -m eroseg aggregate --evals {input.evals:q} --tuning {input.tuning:q} --benchmarks {input.benchmarks:q} --spec {params.spec:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule figures:
    input:
        evals=all_eval_dirs(),
        logs=PLAN.training_logs(),  # external models: no log
        samples=samples_path(),
        min_norm=PLAN.min_norm_files(),  # named in the spec (its min_norm block)
    output:
        report_outputs(PLAN.report_figures(), PLAN.figures_dir(), FIGURE_FORMATS, "Figures", "figure"),
    params:
        spec=flow(PLAN.figure_spec()),
        out_dir=lambda w, output: os.path.dirname(output[0]),
        code=CODE_FIG,
        code_min_norm=CODE_MIN_NORM_REPORT,
    log:
        log_path("figures"),
    conda:
        "../envs/eroseg.yml"
    shell:
        "MPLBACKEND=Agg \"$EROSEG_PYTHON\" -m eroseg figures --evals {input.evals:q} --logs {input.logs:q} --samples {input.samples:q}"
        " --steps {input.samples:q} --spec {params.spec:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"
