-- The main comparison: dense Transformer, Loop x4, ITT x4 (ratios 0.5),
-- MoD (capacity 0.125) and a dense model about 3x larger, trained on the
-- same tokens. Loop, ITT and MoD replace layers 1, 3, ... (from 0), as in
-- the ITT paper (Chen et al., arXiv 2502.13842). They have the dense model's
-- parameter count plus their router and step-encoding vectors.
--
--   build/bin/thinklab run experiments/compare.lua                 # quick, Tiny Shakespeare
--   build/bin/thinklab run experiments/compare.lua setting=full seeds=1,2 out=experiments/results/full
--   build/bin/thinklab run experiments/compare.lua corpus=wikitext models=dense,itt steps=500
--   build/bin/thinklab run experiments/compare.lua train=false out=...   # tables and plots only
--
-- Every run writes <out>/<model>_s<seed>.h5 (HDF5 run log), appends one line
-- to <out>/summary.tsv, and is evaluated under top-k and causal routing
-- (and a calibrated threshold for routed models). Then the analysis scripts
-- write comparison.md/.csv (one row per run), seeds.md/.csv (mean and
-- spread per model), curves.png and routing plots into <out>.
--
-- A run that fails is reported and the others continue (keep_going=false
-- stops at the first failure). Settings (sizes) are in common.lua.
--
-- Under a loaded machine run with OMP_WAIT_POLICY=passive: spinning OpenMP
-- threads on oversubscribed cores made a 2-thread step 12x slower.
local p = thinklab.params{
  setting = "quick",     -- small | quick | full (common.lua); the fields below override it when nonzero
  corpus = "shakespeare", -- shakespeare | wikitext | kjv
  seeds = "1",           -- comma-separated list
  models = "dense,loop,itt,mod,dense3x",
  out = "",              -- results folder; empty = results/<setting>_<corpus> beside this script
  steps = 0,
  batch_size = 0,
  context = 0,
  d_model = 0,
  n_head = 0,
  n_layers = 0,
  lr = 0.0,
  warmup = 0,            -- 0 = a tenth of the steps
  eval_every = 0,
  eval_batches = 0,      -- validation batches of every evaluation (the same batches each time)
  threads = 2,
  bpe_vocab = 1024,      -- kjv only
  data_dir = "",         -- empty = data/ beside this script
  python = "/usr/bin/python3",
  train = true,          -- false: only rebuild the tables and plots from <out>
  analyze = true,
  keep_going = true,
  token_grads = true,    -- log per-token gradient norms 4 times per run
  save_itt = true,       -- keep a checkpoint of each ITT run for elastic.lua
}

local here = arg and arg[0] and arg[0]:match("^(.*)/") or "."
local E = dofile(here .. "/common.lua")
local r = E.or_usage_error("compare.lua", E.resolve, p)
local data_dir = p.data_dir ~= "" and p.data_dir or here .. "/data"
local out = p.out ~= "" and p.out or string.format("%s/results/%s_%s", here, p.setting, p.corpus)
local seeds = E.or_usage_error("compare.lua", E.seeds, p.seeds)
local requested = {}
for _, name in ipairs(E.list(p.models)) do requested[name] = true end
local specs = {}
for _, m in ipairs(E.models) do
  if requested[m.name] then specs[#specs + 1] = m; requested[m.name] = nil end
end
for name in pairs(requested) do
  io.stderr:write(string.format("compare.lua: unknown model '%s'; choose from dense, loop, itt, mod, dense3x\n", name))
  os.exit(2)
end
if #specs == 0 then
  io.stderr:write("compare.lua: models is empty; give models such as models=dense,itt\n")
  os.exit(2)
end
E.mkdir(out)
local summary_path = out .. "/summary.tsv"

thinklab.threads(p.threads)
print(thinklab.threads_info())
local loadavg = "?"
do
  local f = io.open("/proc/loadavg")
  if f then loadavg = f:read("*l") f:close() end
end
print(string.format("compare: setting %s, corpus %s, seeds %s, results in %s", p.setting, p.corpus,
                    table.concat(seeds, ","), out))
print(string.format("sizes: d_model %d, %d heads, %d layers, context %d, batch %d, %d steps, lr %g; load average %s",
                    r.d_model, r.n_head, r.n_layers, r.context, r.batch_size, r.steps, r.lr, loadavg))

local function run_one(m, seed, data, tok)
  return E.train_run(m, seed, data, tok, r, {out = out, threads = p.threads, warmup = p.warmup,
                                            token_grads = p.token_grads, save_itt = p.save_itt})
end

local failures = {}
if p.train then
  E.train_all("compare.lua", p, specs, seeds, summary_path, data_dir, run_one, failures)
end

if p.analyze then
  local rows = E.finished_rows("compare.lua", summary_path)
  local order = {}
  for _, m in ipairs(E.models) do order[#order + 1] = m.name end
  local md = E.write_seed_table(rows, order, out .. "/seeds.md", out .. "/seeds.csv",
                                string.format("%s, setting %s, %d steps of %d x %d tokens, d_model %d",
                                              p.corpus, p.setting, r.steps, r.batch_size, r.context, r.d_model))
  print("\n" .. md)
  local logs, routed = {}, {}
  for _, row in ipairs(rows) do
    if E.exists(row.log) then
      logs[#logs + 1] = E.q(row.log)
      if row.model == "itt" or row.model == "mod" then routed[#routed + 1] = E.q(row.log) end
    end
  end
  local an = here .. "/../analysis"
  local function analysis(script, target, inputs)
    return E.sh(string.format("%s %s -o %s %s", E.q(p.python), E.q(an .. "/" .. script), E.q(target),
                              table.concat(inputs, " ")))
  end
  local steps_ok = {
    analysis("compare_runs.py", out .. "/comparison", logs),
    analysis("plot_curves.py", out .. "/curves.png", logs),
  }
  if #routed > 0 then
    steps_ok[#steps_ok + 1] = analysis("plot_routing.py", out, routed)
  end
  if p.token_grads and #routed > 0 then
    steps_ok[#steps_ok + 1] = analysis("plot_token_grads.py", out, routed)
  end
  for i, ok in ipairs(steps_ok) do
    if not ok then failures[#failures + 1] = "analysis command " .. i .. " failed (see above)" end
  end
  print("\nresults in " .. out .. ":")
  print("  per-seed summary  " .. summary_path)
  print("  per-model table   " .. out .. "/seeds.md, seeds.csv")
  print("  per-run table     " .. out .. "/comparison.md, comparison.csv")
  print("  plots             " .. out .. "/*.png")
  if p.save_itt then
    print("  ITT checkpoints   " .. out .. "/itt_s<seed>.ckpt (for elastic.lua)")
  end
end

E.exit_on_failures("compare.lua", failures)
