-- Started by tests/mpi/run.sh as `mpirun -np W thinklab run ranks.lua ...`
-- with batch = 8 / W, so every world size trains on the same global batch.
-- Checks the rank, world size, thread share and token count on each rank,
-- and prints the final loss for run.sh to compare across world sizes.
local p = thinklab.params{text = "", scratch = "", world = 1, batch = 8, cores = 1}
local rank, world = thinklab.rank(), thinklab.world_size()
local failures = 0
local function check(cond, what)
  if not cond then
    failures = failures + 1
    io.stderr:write(string.format("FAIL  rank %d: %s\n", rank, what))
  end
end

check(world == p.world, string.format("world_size() is %d, mpirun started %d", world, p.world))
check(rank >= 0 and rank < world, "rank() lies in [0, world_size())")
-- All ranks run on this machine, so each gets its share of the cores.
local share = math.max(1, p.cores // world)
check(thinklab.threads() == share,
      string.format("threads() is %d, the share of %d cores over %d ranks is %d",
                    thinklab.threads(), p.cores, world, share))

local c = thinklab.corpus{path = p.text, max_bytes = 100000}
local tok = thinklab.tokenizer{kind = "char", corpus = c}
local ds = c:encode(tok)
local m = thinklab.model{tokenizer = tok, d_model = 32, n_head = 2, context = 32, seed = 3,
                         layers = thinklab.pattern{n = 2, default = {plugin = "transformer"}}}
m:summary() -- printed by rank 0 only
local checkpoint = p.scratch .. "/ranks_w" .. world .. ".h5"
if rank == 0 then os.remove(checkpoint) end
local stats = thinklab.train{model = m, data = ds, steps = 12, batch_size = p.batch, context = 32,
                             optimizer = {lr = 3e-3}, schedule = {warmup = 2}, seed = 5,
                             eval_every = 0, eval_batches = 0, progress_every = 0,
                             checkpoint = checkpoint, callback_every = 4,
                             callback = function(s)
                               check(s.tokens == s.step * p.batch * 32 * world,
                                     "stats.tokens counts the tokens of every rank")
                             end}
-- The evaluation runs on every rank over the whole validation split. print
-- writes on rank 0 only, so each rank reports through io.stdout.
io.stdout:write(string.format("rank %d of %d: train loss %.9f eval loss %.9f\n", rank, world,
                              stats.loss, stats.eval_loss))
print("print from the script")
if rank == 0 then
  local f = io.open(checkpoint, "rb")
  check(f ~= nil, "rank 0 wrote the checkpoint " .. checkpoint)
  if f then f:close() end
end
if failures > 0 then error(failures .. " check(s) failed on rank " .. rank) end
