-- Started by tests/mpi/run.sh under mpirun with two ranks: rank 1 raises a
-- Lua error at step 4 while rank 0 goes on into the next gradient
-- reduction. The thinklab command must then end both ranks.
local p = thinklab.params{text = ""}
local c = thinklab.corpus{path = p.text, max_bytes = 50000}
local tok = thinklab.tokenizer{kind = "char", corpus = c}
local ds = c:encode(tok)
local m = thinklab.model{tokenizer = tok, d_model = 32, n_head = 2, context = 32, seed = 3,
                         layers = thinklab.pattern{n = 2, default = {plugin = "transformer"}}}
thinklab.train{model = m, data = ds, steps = 1000, batch_size = 2, context = 32,
               eval_every = 0, eval_batches = 1, progress_every = 0, callback_every = 1,
               callback = function(s)
                 if thinklab.rank() == 1 and s.step == 4 then
                   error("rank 1 fails on purpose at step 4")
                 end
               end}
