-- trainer:gradient_spikes on a tiny model: the returned labels follow the
-- quantiles, the norms obey nuclear >= Frobenius >= largest singular value,
-- and /analysis/gradient_spikes in the log has the shapes LOG_FORMAT.md
-- gives (read back with h5py). Also trainer:evaluate{routing = "calibrated"}
-- and model:set_ratios with one ratio for every routed step.
local p = thinklab.params{thinklab = "", text = "", fixtures = "", scratch = "",
                          python = "/usr/bin/python3"}
local H = dofile(arg[0]:match("^(.*)/") .. "/helpers.lua")

local c = thinklab.corpus{path = p.text, max_bytes = 100000}
local tok = thinklab.tokenizer{kind = "char", corpus = c}
local ds = c:encode(tok)
local m = thinklab.model{tokenizer = tok, d_model = 32, n_head = 2, context = 32, seed = 3,
                         layers = thinklab.pattern{n = 2, default = {plugin = "transformer"},
                                                   odd = {plugin = "itt", steps = 3}}}
local log = p.scratch .. "/spikes.h5"
os.remove(log)
local tr = thinklab.trainer{model = m, data = ds, steps = 10, batch_size = 4, context = 32,
                            eval_batches = 2, seed = 1, threads = 2, progress_every = 0,
                            log = log, log_overwrite = true, name = 'spike "run"'}
tr:run()

local M, L = 10, 2
local r = tr:gradient_spikes{sequences = M, seq_len = 32, answer_tokens = 4, hard_quantile = 0.8,
                             easy_quantile = 0.5, routing = "causal", norms = true}
H.check(#r.sequences == M and r.n_layers == L, "one result per sequence, two layers")
local hard, easy = 0, 0
for _, s in ipairs(r.sequences) do
  hard = hard + (s.hard and 1 or 0)
  easy = easy + (s.easy and 1 or 0)
end
-- Quantile 0.8 of 10 losses lies between the 8th and 9th (position 7.2):
-- two are above; quantile 0.5 lies between the 5th and 6th: five at or below.
H.check(hard == 2 and easy == 5, string.format("2 hard and 5 easy sequences (got %d, %d)", hard, easy))
local ordered, positive = true, true
for s = 1, M do
  for l = 1, L do
    for k = 1, 4 do
      local n, f, x = r.nuclear[s][l][k], r.frobenius[s][l][k], r.max_sv[s][l][k]
      -- float32 singular values against a double Frobenius sum: 1e-5 relative slack
      if not (n >= f * (1 - 1e-5) and f >= x * (1 - 1e-5)) then ordered = false end
      if not (x > 0) then positive = false end
    end
  end
end
H.check(ordered, "nuclear >= frobenius >= max_sv for every sequence, layer and matrix")
H.check(positive, "every largest singular value is positive")
-- A log holds one analysis, so the second one runs through a trainer
-- without a log on the same weights.
local tr2 = thinklab.trainer{model = m, data = ds, steps = 10, batch_size = 4, context = 32,
                             threads = 2, progress_every = 0}
local def = tr2:gradient_spikes{sequences = M, seq_len = 32, answer_tokens = 4}
local e2 = 0
for _, s in ipairs(def.sequences) do e2 = e2 + (s.easy and 1 or 0) end
H.check(e2 == M - 2, "default easy_quantile: every sequence not hard is easy (" .. e2 .. ")")
H.expect_error("easy above hard", {"easy_quantile"}, function()
  tr2:gradient_spikes{sequences = 2, easy_quantile = 0.9, hard_quantile = 0.8}
end)

-- trainer:evaluate under calibrated thresholds: the realised fraction of
-- the first routed decision matches its ratio on training batches, and on
-- validation batches stays a fraction in (0, 1).
local cal = tr:evaluate{routing = "calibrated", calibration_batches = 2}
H.check(cal.routing == "calibrated" and cal.selected_fraction > 0 and cal.selected_fraction < 1,
        string.format("calibrated evaluation: selected fraction %.3f", cal.selected_fraction))

-- One ratio for both routed steps of the ITT layer.
H.check(m:set_ratios{ratios = {0.25}} == 1, "set_ratios{ratios = {0.25}} sets the ITT layer")
local topk = m:evaluate{data = ds, batches = 2, batch_size = 4}
-- Top-k takes ceil(0.25 * 32) = 8 tokens per sequence at both steps.
H.check(math.abs(topk.selected_fraction - 0.25) < 1e-12,
        string.format("both steps at ratio 0.25 (fraction %.6f)", topk.selected_fraction))
H.check(m:set_ratios{ratios = 0.75} == 1, "set_ratios{ratios = 0.75} accepts a plain number")
topk = m:evaluate{data = ds, batches = 2, batch_size = 4}
H.check(math.abs(topk.selected_fraction - 0.75) < 1e-12,
        string.format("both steps at ratio 0.75 (fraction %.6f)", topk.selected_fraction))
tr:close()

local script = [[
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r") as f:
    g = f["analysis/gradient_spikes"]
    R = g["loss"].shape[0]
    assert R == 10, R
    assert int(g.attrs["n_layers"]) == 2
    for k in ("nuclear", "frobenius", "max_sv"):
        assert g[k].shape == (R, 2, 4), (k, g[k].shape)
    assert g["label_by_loss"].shape == (R,) and g["label_by_answer"].shape == (R,)
    assert list(g["step"][:]) == [10] * R
    print("shapes ok; quantiles", g.attrs["easy_quantile"], g.attrs["hard_quantile"])
    sys.path.insert(0, sys.argv[2])
    import tllog
    assert tllog.run_name(f, sys.argv[1]) == 'spike "run"', tllog.run_name(f, sys.argv[1])
    model = tllog.config(f)["model"]
    assert model["flops_per_token"] > 0 and model["parameters"] > 0, model
    print("name and flops ok")
]]
local sf = p.scratch .. "/check_spikes.py"
local fh = assert(io.open(sf, "w"))
fh:write(script)
fh:close()
local analysis = arg[0]:match("^(.*)/") .. "/../../analysis"
local out, code = H.run(string.format("%s %s %s %s", p.python, sf, log, analysis))
H.check(code == 0 and H.contains(out, "shapes ok"), "log group shapes: " .. out:gsub("\n$", ""))
H.check(code == 0 and H.contains(out, "name and flops ok"),
        "run name from trainer{name = ...} and model flops_per_token in the config")
H.done()
