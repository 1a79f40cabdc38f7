-- ITT x4 ablations (no RTC, no TSE, no ATR, tanh router): the full layer against the same layer
-- without the Residual Thinking Connection, without Thinking Step Encoding,
-- without Adaptive Token Routing, and with a tanh router. Same sizes,
-- tokens and layer pattern (layers 1, 3, ... ITT) as compare.lua; a dense
-- Transformer is trained beside them as the reference unless models= says
-- otherwise.
--
--   build/bin/thinklab run experiments/ablations.lua                       # small
--   build/bin/thinklab run experiments/ablations.lua setting=full seeds=1,2 out=...
--
-- Writes <out>/<variant>_s<seed>.h5, summary.tsv, seeds.md/.csv (mean and
-- spread per variant), comparison.md/.csv and curves.png.
local p = thinklab.params{
  setting = "small",
  corpus = "shakespeare",
  seeds = "1",
  models = "dense,itt,itt_no_rtc,itt_no_tse,itt_no_atr,itt_tanh",
  out = "",
  steps = 0,
  batch_size = 0,
  context = 0,
  d_model = 0,
  n_head = 0,
  n_layers = 0,
  lr = 0.0,
  warmup = 0,
  eval_every = 0,
  eval_batches = 0,
  threads = 2,
  bpe_vocab = 1024,
  data_dir = "",
  python = "/usr/bin/python3",
  train = true,
  analyze = true,
  keep_going = true,
}

local here = arg and arg[0] and arg[0]:match("^(.*)/") or "."
local E = dofile(here .. "/common.lua")
local r = E.or_usage_error("ablations.lua", E.resolve, p)

local function itt(extra)
  local s = {plugin = "itt", steps = 4, ratios = {0.5, 0.5, 0.5}}
  for k, v in pairs(extra) do s[k] = v end
  return s
end
local variants = {
  {name = "dense", label = "Transformer"},
  {name = "itt", label = "ITT x4", routed = true, special = itt{}},
  {name = "itt_no_rtc", label = "ITT x4 without RTC", routed = true, special = itt{no_rtc = true}},
  {name = "itt_no_tse", label = "ITT x4 without TSE", routed = true, special = itt{no_tse = true}},
  -- Without ATR every step takes every token: no ratios to give.
  {name = "itt_no_atr", label = "ITT x4 without ATR", special = {plugin = "itt", steps = 4, no_atr = true}},
  {name = "itt_tanh", label = "ITT x4 tanh router", routed = true, special = itt{router = "tanh"}},
}

local data_dir = p.data_dir ~= "" and p.data_dir or here .. "/data"
local out = p.out ~= "" and p.out or string.format("%s/results/ablations_%s_%s", here, p.setting, p.corpus)
local seeds = E.or_usage_error("ablations.lua", E.seeds, p.seeds)
local requested, specs = {}, {}
for _, name in ipairs(E.list(p.models)) do requested[name] = true end
for _, v in ipairs(variants) do
  if requested[v.name] then specs[#specs + 1] = v; requested[v.name] = nil end
end
for name in pairs(requested) do
  io.stderr:write(string.format("ablations.lua: unknown variant '%s'; choose from dense, itt, itt_no_rtc, " ..
                                  "itt_no_tse, itt_no_atr, itt_tanh\n", name))
  os.exit(2)
end
if #specs == 0 then
  io.stderr:write("ablations.lua: models is empty; give variants such as models=dense,itt\n")
  os.exit(2)
end
E.mkdir(out)
local summary_path = out .. "/summary.tsv"
thinklab.threads(p.threads)
print(thinklab.threads_info())
print(string.format("ablations: setting %s, corpus %s, seeds %s, results in %s", p.setting, p.corpus,
                    table.concat(seeds, ","), out))

local failures = {}
if p.train then
  local function run(v, seed, data, tok)
    return E.train_run(v, seed, data, tok, r, {out = out, threads = p.threads, warmup = p.warmup, token_grads = false})
  end
  E.train_all("ablations.lua", p, specs, seeds, summary_path, data_dir, run, failures)
end

if p.analyze then
  local rows = E.finished_rows("ablations.lua", summary_path)
  local order = {}
  for _, v in ipairs(variants) do order[#order + 1] = v.name end
  print("\n" .. E.write_seed_table(rows, order, out .. "/seeds.md", out .. "/seeds.csv",
                                   string.format("ITT ablations, %s, setting %s, %d steps of %d x %d tokens, d_model %d",
                                                 p.corpus, p.setting, r.steps, r.batch_size, r.context, r.d_model)))
  local logs = {}
  for _, row in ipairs(rows) do
    if E.exists(row.log) then logs[#logs + 1] = E.q(row.log) end
  end
  local an = here .. "/../analysis"
  for _, run in ipairs{{"compare_runs.py", out .. "/comparison"}, {"plot_curves.py", out .. "/curves.png"}} do
    if not E.sh(string.format("%s %s -o %s %s", E.q(p.python), E.q(an .. "/" .. run[1]), E.q(run[2]),
                              table.concat(logs, " "))) then
      failures[#failures + 1] = run[1] .. " failed"
    end
  end
  print("\nresults in " .. out .. " (seeds.md, comparison.md, curves.png)")
end

E.exit_on_failures("ablations.lua", failures)
