-- Elastic inference: one ITT x4 model trained at ratios 0.5 is evaluated,
-- without retraining, over a grid of routed-step ratios and with steps
-- dropped (ratio 0). Each setting is reported with its FLOPs relative to the
-- dense model of the same shape.
--
--   build/bin/thinklab run experiments/elastic.lua                  # trains a small ITT first
--   build/bin/thinklab run experiments/elastic.lua setting=quick checkpoint=experiments/results/quick_shakespeare/itt_s1.ckpt
--
-- checkpoint= takes the ITT checkpoint compare.lua saves (<out>/itt_s<seed>.ckpt);
-- the setting and size overrides must be those of the run that wrote it.
-- Writes <out>/elastic.md, elastic.csv and elastic.png.
local p = thinklab.params{
  setting = "small",
  corpus = "shakespeare",
  seed = 1,
  checkpoint = "",       -- empty = train an ITT x4 model here first
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
  eval_batches = 0,      -- validation batches per grid point (the same batches for every point)
  threads = 2,
  bpe_vocab = 1024,
  data_dir = "",
  python = "/usr/bin/python3",
}

local here = arg and arg[0] and arg[0]:match("^(.*)/") or "."
local E = dofile(here .. "/common.lua")
local r = E.or_usage_error("elastic.lua", E.resolve, p)
local data_dir = p.data_dir ~= "" and p.data_dir or here .. "/data"
local out = p.out ~= "" and p.out or string.format("%s/results/elastic_%s_%s", here, p.setting, p.corpus)
E.mkdir(out)
thinklab.threads(p.threads)
print(thinklab.threads_info())

local data, tok, desc = E.load_corpus(p.corpus, data_dir, p.bpe_vocab)
print(desc)
local spec
for _, m in ipairs(E.models) do if m.name == "itt" then spec = m end end

local ck = p.checkpoint
if ck == "" then
  ck = string.format("%s/itt_s%d.ckpt", out, p.seed)
  local row = E.train_run(spec, p.seed, data, tok, r, {out = out, threads = p.threads, warmup = p.warmup,
                                                        token_grads = false, save_itt = true})
  print(string.format("trained ITT x4: validation %.4f nats/token under top-k", row.val_topk))
elseif not E.exists(ck) then
  io.stderr:write("elastic.lua: checkpoint " .. ck .. " not found: run compare.lua first, or leave checkpoint empty to train here\n")
  os.exit(1)
end

-- Load the weights through a trainer of the same configuration.
local model = E.build(spec, r, tok, p.seed)
local tr = thinklab.trainer{model = model, data = data, steps = r.steps, batch_size = r.batch_size,
                            context = r.context, eval_batches = r.eval_batches, progress_every = 0,
                            threads = p.threads}
local at = tr:load(ck)
print(string.format("loaded %s (step %d)", ck, at))

local dense = E.build(E.models[1], r, tok, p.seed)
local dense_sum = dense:summary{print = false}
local function layer_flops(s)
  local f = 0.0
  for _, l in ipairs(s.layers) do f = f + l.flops_per_token end
  return f
end
local dense_layers = layer_flops(dense_sum)
local n_itt = 0
for _, l in ipairs(dense_sum.layers) do if l.index % 2 == 1 then n_itt = n_itt + 1 end end
local half = n_itt / #dense_sum.layers

local grid = {
  {"uniform 0", {0, 0, 0}}, {"uniform 0.125", {0.125, 0.125, 0.125}}, {"uniform 0.25", {0.25, 0.25, 0.25}},
  {"uniform 0.375", {0.375, 0.375, 0.375}}, {"uniform 0.5 (training)", {0.5, 0.5, 0.5}},
  {"uniform 0.625", {0.625, 0.625, 0.625}}, {"uniform 0.75", {0.75, 0.75, 0.75}},
  {"uniform 0.875", {0.875, 0.875, 0.875}}, {"uniform 1", {1, 1, 1}},
  {"paper 0.7/0.7/0.9", {0.7, 0.7, 0.9}},
  {"drop step 1", {0, 0.5, 0.5}}, {"drop step 2", {0.5, 0, 0.5}}, {"drop step 3", {0.5, 0.5, 0}},
  {"step 1 only", {0.5, 0, 0}}, {"rising 0.25/0.5/0.75", {0.25, 0.5, 0.75}},
  {"falling 0.75/0.5/0.25", {0.75, 0.5, 0.25}},
}

local rows = {}
local md = {string.format("## Elastic inference, ITT x4 trained at ratios 0.5 (%s, setting %s, seed %d)\n", p.corpus,
                          p.setting, p.seed),
            "Validation loss under top-k routing on the same " .. r.eval_batches .. " batches for every setting. " ..
            "Relative FLOPs per token (forward, T = " .. r.context .. ") against the dense model of the same " ..
            "shape, from model:summary; `formula` is the paper's layers-only 1 + 1/2 sum(rho).\n",
            "| setting | ratios | val loss | ppl | selected fraction | rel. FLOPs (model) | rel. FLOPs (layers) | formula |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"}
local csv = {"setting,r1,r2,r3,val_loss,ppl,selected_fraction,rel_flops_model,rel_flops_layers,rel_flops_formula"}
for _, g in ipairs(grid) do
  local name, ratios = g[1], g[2]
  model:set_ratios{ratios = ratios}
  local s = model:summary{print = false}
  local e = model:evaluate{data = data, routing = "topk", batch_size = r.batch_size, context = r.context,
                           batches = r.eval_batches}
  local rel_model = s.flops_per_token / dense_sum.flops_per_token
  local rel_layers = layer_flops(s) / dense_layers
  local formula = 1 + half * (ratios[1] + ratios[2] + ratios[3])
  local ratio_text = string.format("%g/%g/%g", ratios[1], ratios[2], ratios[3])
  md[#md + 1] = string.format("| %s | %s | %.4f | %.3f | %s | %.3f | %.3f | %.3f |", name, ratio_text, e.loss,
                              e.perplexity, e.selected_fraction and string.format("%.3f", e.selected_fraction) or "",
                              rel_model, rel_layers, formula)
  csv[#csv + 1] = string.format("%s,%g,%g,%g,%.6g,%.6g,%s,%.6g,%.6g,%.6g", name, ratios[1], ratios[2], ratios[3],
                                e.loss, e.perplexity, e.selected_fraction and string.format("%.6g", e.selected_fraction)
                                or "", rel_model, rel_layers, formula)
  print(md[#md])
end
model:set_ratios{ratios = {0.5, 0.5, 0.5}}
local dense_text = "\nThe dense model of the same shape is not trained here; compare its loss from compare.lua."
local f = assert(io.open(out .. "/elastic.md", "w"))
f:write(table.concat(md, "\n"), "\n", dense_text, "\n")
f:close()
f = assert(io.open(out .. "/elastic.csv", "w"))
f:write(table.concat(csv, "\n"), "\n")
f:close()
local ok = E.sh(string.format("%s %s -o %s %s", E.q(p.python), E.q(here .. "/../analysis/plot_elastic.py"),
                              E.q(out .. "/elastic.png"), E.q(out .. "/elastic.csv")))
print("\nresults in " .. out .. " (elastic.md, elastic.csv" .. (ok and ", elastic.png)" or "; the plot failed)"))
tr:close()
if not ok then os.exit(1) end
