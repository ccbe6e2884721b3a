# Tables and figures: cheap local jobs that read JSON/CSV/NPZ only (no model is loaded).


rule aggregate:
    input:
        evals=all_eval_dirs(),
        tuning=[tuning_path(f) for f in TUNED_FAMILIES],
        benchmarks=benchmark_files(),
    output:
        [
            report(f"{OUT}/tables/{t}.html", caption=f"../report/{TABLE_CAPTIONS.get(t, 'table_other')}.rst",
                   category="Tables", labels={"table": t})
            for t in TABLES
        ],
        [f"{OUT}/tables/{t}.{ext}" for t in TABLES for ext in ("csv", "md")],
    params:
        spec=flow(aggregate_spec()),
        out_dir=lambda w, output: os.path.dirname(output[0]),
        code=CODE_AGG,
    log:
        f"{OUT}/logs/aggregate.log",
    conda:
        "../envs/eroseg.yml"
    shell:
        "\"$EROSEG_PYTHON\" -m eroseg aggregate --evals {input.evals:q} --tuning {input.tuning:q} --benchmarks {input.benchmarks:q} --spec {params.spec:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule figures:
    input:
        evals=all_eval_dirs(),
        logs=[f"{OUT}/models/{m}/seed{s}/log.csv" for m in TRAINED for s in SEEDS],  # external models: no log
        samples=samples_path(),
    output:
        [
            report(f"{OUT}/figures/{f}.png", caption=f"../report/{FIGURE_CAPTIONS[f]}.rst", category="Figures",
                   labels={"figure": f})
            for f in FIGURES
        ],
        [f"{OUT}/figures/{f}.svg" for f in FIGURES],
    params:
        spec=flow(figure_spec()),
        out_dir=lambda w, output: os.path.dirname(output[0]),
        code=CODE_FIG,
    log:
        f"{OUT}/logs/figures.log",
    conda:
        "../envs/eroseg.yml"
    shell:
        "MPLBACKEND=Agg \"$EROSEG_PYTHON\" -m eroseg figures --evals {input.evals:q} --logs {input.logs:q} --samples {input.samples:q}"
        " --steps {input.samples:q} --spec {params.spec:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"
