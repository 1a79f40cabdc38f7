-- Training through Lua on a slice of Tiny Shakespeare: the loss must fall,
-- the callback runs every N-th step, a false return stops the run, the run
-- log is written, and a run resumed from a checkpoint matches an
-- uninterrupted one bit for bit.
local p = thinklab.params{thinklab = "", text = "", fixtures = "", scratch = "", steps = 75}
local H = dofile(arg[0]:match("^(.*)/") .. "/helpers.lua")

local c = thinklab.corpus{path = p.text, max_bytes = 200000}
local tok = thinklab.tokenizer{kind = "char", corpus = c}
local ds = c:encode(tok)

local function build(seed)
  return thinklab.model{tokenizer = tok, d_model = 64, n_head = 4, context = 64, seed = seed,
                        layers = thinklab.pattern{n = 2, default = {plugin = "transformer"},
                                                  odd = {plugin = "itt", steps = 2}}}
end

-- 1. The loss falls. Untrained, the model predicts about uniformly over the
-- 61 symbols (ln 61 = 4.11 nats). Measured with this script (2 threads,
-- Release build): 4.131 before, 2.522 after 75 steps of 16 x 64 tokens at
-- lr 3e-3 (2.334 after 150). The check requires a drop of at least 1.0 nat.
local m = build(1)
local before = m:evaluate{data = ds, batches = 8, batch_size = 16}
local seen = {}
local log = p.scratch .. "/run.h5"
os.remove(log)
local final = thinklab.train{model = m, data = ds, steps = p.steps, batch_size = 16, context = 64,
                             optimizer = {lr = 3e-3}, schedule = {warmup = 10, min_lr = 3e-4},
                             clip = 1.0, eval_every = 50, eval_batches = 8, seed = 7, threads = 2,
                             progress_every = 0, log = log, callback_every = 25,
                             callback = function(s)
                               seen[#seen + 1] = s.step
                               H.check(s.loss > 0 and s.lr > 0 and s.tokens == s.step * 16 * 64,
                                       "callback stats at step " .. s.step)
                             end}
local after = m:evaluate{data = ds, batches = 8, batch_size = 16}
print(string.format("validation loss %.4f -> %.4f nats/char (%.3f bits/char)", before.loss, after.loss,
                    after.bits_per_char))
H.check(after.loss < before.loss - 1.0, "validation loss falls by more than 1.0 nat")
H.check(final.step == p.steps and final.eval_loss ~= nil, "run ends at the last step with an evaluation")
H.check(math.abs(final.eval_loss - after.loss) < 1e-6, "final evaluation equals model:evaluate on the same batches")
local expect = {}
for s = 25, p.steps, 25 do expect[#expect + 1] = s end
if p.steps % 25 ~= 0 then expect[#expect + 1] = p.steps end -- the last step always calls back
H.check(table.concat(seen, ",") == table.concat(expect, ","), "callback every 25 steps: " .. table.concat(seen, ","))
local f = io.open(log, "rb")
H.check(f ~= nil and f:read(8) == "\137HDF\r\n\26\n", "run log is an HDF5 file")
if f then f:close() end
local sample = m:generate{prompt = "ROMEO:", max_tokens = 80, temperature = 0.8, top_k = 20, seed = 1}
print("sample: ROMEO:" .. sample)
H.check(#sample == 80, "generation after training gives 80 characters")

-- 2. A false return stops the run after that step.
local m2 = build(2)
local tr = thinklab.trainer{model = m2, data = ds, steps = 20, batch_size = 4, context = 32,
                            progress_every = 0, eval_batches = 2, eval_every = 0, callback_every = 5,
                            callback = function(s) if s.step == 10 then return false end end}
local st = tr:run()
H.check(st.step == 10 and tr:step_index() == 10, "callback returning false stops at step 10")

-- A token budget gives ceil(tokens / (B * T)) steps; the default warm-up
-- shrinks to a tenth of a short run.
local budget = thinklab.trainer{model = m2, data = ds, tokens = 4 * 32 * 10 + 1, batch_size = 4,
                                context = 32, progress_every = 0, eval_batches = 2,
                                optimizer = {lr = 1e-3}}
local bc = budget:config()
H.check(bc.steps == 11 and bc.tokens == 1281, "token budget 1281 at 4 x 32 gives 11 steps")
H.check(bc.schedule.warmup == 1 and bc.schedule.kind == "cosine", "default warm-up of a short run is a tenth")
-- A tenth up to 100 steps of warm-up: no jump from 10 to 100 past 100 steps.
for _, case in ipairs{{100, 10}, {150, 15}, {999, 99}, {5000, 100}} do
  local tc = thinklab.trainer{model = m2, data = ds, steps = case[1], batch_size = 4, context = 32,
                              progress_every = 0, eval_batches = 2}:config()
  H.check(tc.schedule.warmup == case[2], string.format("default warm-up of %d steps is %d, got %d",
                                                       case[1], case[2], tc.schedule.warmup))
end
H.check(bc.optimizer.kind == "adamw" and math.abs(bc.optimizer.lr - 1e-3) < 1e-9, "optimizer settings arrive")
H.check(bc.shards == true, "shards are on by default")
budget:close()
local unsharded = thinklab.trainer{model = m2, data = ds, steps = 2, batch_size = 4, context = 32,
                                   progress_every = 0, eval_batches = 2, shards = false}
H.check(unsharded:config().shards == false, "shards = false arrives")
unsharded:close()
H.expect_error("shards must be a boolean", {"shards"}, thinklab.trainer,
               {model = m2, data = ds, steps = 2, batch_size = 4, context = 32, shards = "yes"})

-- 3. Resume: run A trains 20 steps straight; run B stops at 10 and saves;
-- run C builds a fresh model, loads B's checkpoint and trains to 20. The
-- last loss and the final evaluation must be equal bit for bit (same
-- thread count, deterministic kernels).
local ck = p.scratch .. "/resume.h5"
os.remove(ck)
tr:save(ck)
local function config(model, extra)
  local t = {model = model, data = ds, steps = 20, batch_size = 4, context = 32, progress_every = 0,
             eval_batches = 2, eval_every = 0, threads = 2}
  for k, v in pairs(extra or {}) do t[k] = v end
  return t
end
local sa = thinklab.train(config(build(2)))
local sc, trc = thinklab.train(config(build(3), {resume = ck}))
print(string.format("straight %.17g / %.17g, resumed %.17g / %.17g", sa.loss, sa.eval_loss, sc.loss, sc.eval_loss))
H.check(sc.step == 20 and trc:step_index() == 20, "resumed run continues from step 10 to 20")
H.check(sa.loss == sc.loss, "resumed last-step loss equals the uninterrupted run's")
H.check(sa.eval_loss == sc.eval_loss, "resumed final evaluation equals the uninterrupted run's")
H.expect_error("resume of a finished run", {ck, "already at step 10 = steps", "raise steps"},
               thinklab.train, config(build(3), {resume = ck, steps = 10}))
H.expect_error("resume into another run's log", {log, ck, "belongs to run", "give the resumed run a new log path"},
               thinklab.train, config(build(3), {resume = ck, log = log, log_overwrite = true}))

-- trainer:load on an existing trainer, after stepping it elsewhere
local trd = thinklab.trainer(config(build(4)))
trd:step()
H.check(trd:load(ck) == 10 and trd:step_index() == 10, "trainer:load rewinds to the checkpoint's step")
local e_topk = trd:evaluate{routing = "topk"}
local e_causal = trd:evaluate{routing = "causal"}
H.check(e_topk.routing == "topk" and e_causal.routing == "causal" and e_causal.selected_fraction ~= nil,
        "trainer:evaluate under topk and causal routing")

H.done()
