-- Input and output paths that thinklab cannot use: devices, FIFOs, read-only
-- logs, dangling links, paths through a file, and files that a tokenizer save
-- would destroy. Each case runs the thinklab command as a child process under
-- timeout, because an open of a FIFO blocks until a writer appears and
-- reading /dev/zero never ends.
local p = thinklab.params{thinklab = "", text = "", fixtures = "", scratch = ""}
local H = dofile(arg[0]:match("^(.*)/") .. "/helpers.lua")
local dir = p.scratch

local function quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  return text
end

-- The files of an earlier run of this test. A run stopped between chattr +i
-- and chattr -i leaves an immutable log, which os.remove cannot remove.
H.run("chattr -i " .. quote(dir .. "/run.h5") .. " 2>/dev/null")
for _, name in ipairs{"small.txt", "driver.lua", "fifo", "run.h5", "run.ckpt", "dangling.h5",
                      "loop_a.h5", "loop_b.h5", "copy.txt", "run.tok", "run.tok.tmp", "limited.h5",
                      "limited.ckpt", "limited.ckpt.tmp", "huge.txt"} do
  os.remove(dir .. "/" .. name)
end
os.remove(dir .. "/read_only")

local src = assert(io.open(p.text, "rb"))
local corpus = dir .. "/small.txt"
write(corpus, src:read(20000))
src:close()

local driver = dir .. "/driver.lua"
write(driver, [[
local p = thinklab.params{corpus = "", tokenizer = "", save_tokenizer = "", log = "", resume = "",
                          checkpoint = "", save = "", plugin = "transformer", steps = 4,
                          overwrite = false}
local c = thinklab.corpus{path = p.corpus}
local tok = p.tokenizer ~= "" and thinklab.load_tokenizer(p.tokenizer)
            or thinklab.tokenizer{kind = "char", corpus = c}
if p.save_tokenizer ~= "" then
  tok:save(p.save_tokenizer)
  print("saved")
  return
end
local m = thinklab.model{tokenizer = tok, d_model = 16, n_head = 2, context = 16, seed = 1,
                         layers = {{plugin = p.plugin}}}
local cfg = {model = m, data = c:encode(tok), steps = p.steps, batch_size = 2, progress_every = 0,
             eval_batches = 1}
if p.log ~= "" then cfg.log = p.log; cfg.log_overwrite = p.overwrite end
if p.resume ~= "" then cfg.resume = p.resume end
if p.checkpoint ~= "" then cfg.checkpoint = p.checkpoint; cfg.checkpoint_overwrite = true end
local _, tr = thinklab.train(cfg)
print("trained")
if p.save ~= "" then tr:save(p.save) end
]])

-- Reading /dev/zero without the regular-file check fills memory until the
-- kernel kills the process, or another one. Those cases run under a 4 GiB
-- address-space limit, which AddressSanitizer cannot start under (it maps
-- terabytes of shadow memory), so the sanitizer pass skips them.
local sanitized = (os.getenv("TL_SANITIZE") or ""):upper()
sanitized = sanitized == "ON" or sanitized == "TRUE" or sanitized == "1" or sanitized == "YES"
local memory_limit = "ulimit -v 4194304 && "

-- Runs the driver with key=value overrides (corpus defaults to the small
-- corpus). prefix goes before the command, stdin after it.
local function run(overrides, prefix, stdin)
  local args = {}
  if not overrides.corpus then args[1] = quote("corpus=" .. corpus) end
  for k, v in pairs(overrides) do args[#args + 1] = quote(k .. "=" .. tostring(v)) end
  local cmd = string.format("%stimeout 120 %s run %s %s < %s", prefix or "", quote(p.thinklab),
                            quote(driver), table.concat(args, " "), quote(stdin or "/dev/null"))
  return H.run(cmd)
end

-- Checks that the run fails in time and that its output has every fragment.
local function expect_failure(label, overrides, fragments, prefix)
  local out, code = run(overrides, prefix)
  if not H.check(code ~= 124, label .. ": finishes within 120 s") then
    return
  end
  H.check(code ~= 0, label .. ": exits non-zero")
  for _, f in ipairs(fragments) do
    if not H.check(H.contains(out, f), label .. ": message contains " .. f) then
      io.stderr:write(out)
    end
  end
end

local fifo = dir .. "/fifo"
local _, mkfifo_code = H.run("mkfifo " .. quote(fifo))
H.check(mkfifo_code == 0, "mkfifo makes a FIFO")
local fifo_is = "'" .. fifo .. "' is a FIFO (named pipe), not a regular file"
local regular = "give the path of a regular file instead"

-- inputs read whole into memory
if sanitized then
  print("skip  /dev/zero and larger-than-memory inputs: they need an address-space limit")
else
  expect_failure("corpus /dev/zero", {corpus = "/dev/zero"},
                 {"text file '/dev/zero' is a character device, not a regular file", regular},
                 memory_limit)
  expect_failure("tokenizer /dev/zero", {tokenizer = "/dev/zero"},
                 {"tokenizer file '/dev/zero' is a character device, not a regular file"},
                 memory_limit)

  -- A sparse 100 GiB file takes no disk space. Its size sizes the buffer, so
  -- the allocation fails at once instead of after reading 4 GiB of zeros.
  local huge = dir .. "/huge.txt"
  local _, truncate_code = H.run("truncate -s 100G " .. quote(huge))
  if truncate_code == 0 then
    expect_failure("corpus larger than memory", {corpus = huge},
                   {"could not allocate 102400.00 MiB to read text file '" .. huge .. "'",
                    "use a smaller file"}, memory_limit)
  else
    print("skip  corpus larger than memory: this file system has no sparse files")
  end
  os.remove(huge)
end
expect_failure("corpus /dev/null", {corpus = "/dev/null"},
               {"text file '/dev/null' is a character device, not a regular file", regular})
expect_failure("corpus FIFO", {corpus = fifo}, {"text file " .. fifo_is, regular})
expect_failure("tokenizer FIFO", {tokenizer = fifo}, {"tokenizer file " .. fifo_is, regular})
expect_failure("plugin /dev/zero", {plugin = "/dev/zero"},
               {"plugin file '/dev/zero' is a character device, not a regular file"})

-- /dev/stdin that the shell points at a regular file is that file.
local out, code = run({corpus = "/dev/stdin"}, nil, corpus)
H.check(code == 0 and H.contains(out, "trained"), "corpus /dev/stdin redirected from a file trains")

-- tokenizer saves, which rename a temporary file over the path
local copy = dir .. "/copy.txt"
write(copy, read(corpus))
expect_failure("tokenizer save over a corpus", {save_tokenizer = copy},
               {"tokenizer file '" .. copy .. "' exists and is not a thinklab tokenizer file",
                "choose another path or delete the file"})
H.check(read(copy) == read(corpus), "the refused tokenizer save kept the corpus")
expect_failure("tokenizer save over a FIFO", {save_tokenizer = fifo}, {"tokenizer file " .. fifo_is})
local _, fifo_code = H.run("test -p " .. quote(fifo))
H.check(fifo_code == 0, "the refused tokenizer save kept the FIFO")
local tok_path = dir .. "/run.tok"
out, code = run({save_tokenizer = tok_path})
H.check(code == 0 and H.contains(out, "saved"), "tokenizer save to a new path")
out, code = run({save_tokenizer = tok_path})
H.check(code == 0 and H.contains(out, "saved"), "tokenizer save over a tokenizer file")
H.run("mkfifo " .. quote(tok_path .. ".tmp"))
expect_failure("tokenizer save with a FIFO at .tmp", {save_tokenizer = tok_path},
               {"temporary tokenizer file '" .. tok_path .. ".tmp' is a FIFO (named pipe)"})

-- checkpoints and logs
local log, ck = dir .. "/run.h5", dir .. "/run.ckpt"
out, code = run({log = log, checkpoint = ck})
if not H.check(code == 0, "a first run writes a log and a checkpoint") then
  io.stderr:write(out)
end
expect_failure("resume from a FIFO", {resume = fifo}, {"checkpoint " .. fifo_is, regular})
expect_failure("resume into a FIFO log", {resume = ck, log = fifo, steps = 8}, {"run log " .. fifo_is})
expect_failure("new log over a FIFO", {log = fifo, overwrite = true}, {"run log " .. fifo_is})
expect_failure("checkpoint /dev/null", {checkpoint = "/dev/null"},
               {"checkpoint '/dev/null' is a character device, not a regular file"})

-- A read-only log. Root writes any file whatever its mode, so as root the
-- child runs without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, and the mode
-- bits apply to it as to any other user.
local uid = H.run("id -u"):match("%d+")
local prefix = ""
if uid == "0" then
  prefix = "setpriv --bounding-set=-dac_override,-dac_read_search "
  local _, setpriv_code = H.run(prefix .. "true")
  if setpriv_code ~= 0 then
    prefix = nil
    print("skip  read-only log: setpriv cannot drop capabilities here")
  end
end
if prefix then
  local before = read(log)
  H.run("chmod 0444 " .. quote(log))
  local unwritable = {"run log '" .. log .. "' exists but cannot be opened for writing",
                      "make it writable", "or choose another log path"}
  expect_failure("resume into a read-only log", {resume = ck, log = log, steps = 8}, unwritable,
                 prefix)
  expect_failure("overwrite a read-only log", {log = log, overwrite = true}, unwritable, prefix)
  H.run("chmod 0644 " .. quote(log))
  -- Another user's log: chmod would not help, its owner must act.
  local nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups "
  local _, nobody_code = H.run(nobody .. "true")
  if uid == "0" and nobody_code == 0 then
    expect_failure("resume into another user's log", {resume = ck, log = log, steps = 8},
                   {"run log '" .. log .. "' exists but cannot be opened for writing",
                    "it belongs to another user (uid 0), so ask its owner"}, nobody)
  else
    print("skip  another user's log: the test needs root and setpriv --reuid")
  end
  H.check(read(log) == before, "the read-only log is unchanged")

  local locked = dir .. "/read_only"
  H.run("mkdir -p " .. quote(locked) .. " && chmod 0555 " .. quote(locked))
  expect_failure("log in a read-only folder", {log = locked .. "/run.h5"},
                 {"cannot create run log '" .. locked .. "/run.h5'",
                  "make the folder writable or choose another path"}, prefix)
  expect_failure("checkpoint in a read-only folder", {checkpoint = locked .. "/run.ckpt"},
                 {"cannot create checkpoint '" .. locked .. "/run.ckpt': its temporary file",
                  "make the folder writable or choose another path"}, prefix)
  H.run("chmod 0755 " .. quote(locked))
end

-- An immutable log (chattr +i) stops writes by root too. Setting the
-- attribute needs CAP_LINUX_IMMUTABLE and a file system that supports it.
local _, chattr_code = H.run("chattr +i " .. quote(log))
if chattr_code == 0 then
  local before = read(log)
  expect_failure("resume into an immutable log", {resume = ck, log = log, steps = 8},
                 {"run log '" .. log .. "' exists but cannot be opened for writing",
                  "chattr -i -a", "or choose another log path"})
  H.run("chattr -i " .. quote(log))
  H.check(read(log) == before, "the immutable log is unchanged")
else
  print("skip  immutable log: chattr +i is not allowed here")
end

-- A checkpoint path that cannot be created fails before training, because a
-- failed save at the end of the run would lose the trained weights.
local long_name = dir .. "/" .. string.rep("c", 300)
expect_failure("checkpoint name too long", {checkpoint = long_name .. ".ckpt"},
               {"trainer: cannot create checkpoint '" .. long_name .. ".ckpt': its temporary file",
                "File name too long"})
expect_failure("log name too long", {log = long_name .. ".h5"},
               {"cannot create run log '" .. long_name .. ".h5': File name too long"})

-- A write past the file size limit (ulimit -f) raises SIGXFSZ, which kills
-- the process. The model has 6000 parameters, so every checkpoint has at
-- least 72000 bytes of weights and optimizer moments, and a log needs 1 MiB.
local limited_log, limited_ck = dir .. "/limited.h5", dir .. "/limited.ckpt"
local small_limit = "ulimit -f 50 && " -- 51200 bytes
local limit_text = "the process's file size limit (ulimit -f)"
expect_failure("checkpoint above ulimit -f", {checkpoint = limited_ck},
               {"trainer: checkpoint '" .. limited_ck .. "' needs at least 0.07 MiB", limit_text,
                "raise the limit or train without a checkpoint"}, small_limit)
expect_failure("save above ulimit -f", {save = limited_ck},
               {"checkpoint '" .. limited_ck .. "': writing '" .. limited_ck .. ".tmp' failed",
                "no checkpoint was written"}, small_limit)
H.check(read(limited_ck .. ".tmp") == nil, "the refused save leaves no temporary file")
expect_failure("log below 1 MiB of ulimit -f", {log = limited_log},
               {"cannot create run log '" .. limited_log .. "'", limit_text, "raise the limit"},
               small_limit)
H.check(read(limited_log) == nil, "the refused log leaves no file")

-- links and folders on the way to a new log or checkpoint
local dangling = dir .. "/dangling.h5"
H.run("ln -s missing_target.h5 " .. quote(dangling))
expect_failure("log through a dangling link", {log = dangling},
               {"run log '" .. dangling .. "' is a symbolic link to 'missing_target.h5', which does not exist",
                "give the target's path instead, or remove the link"})
local loop_a, loop_b = dir .. "/loop_a.h5", dir .. "/loop_b.h5"
H.run("ln -s loop_b.h5 " .. quote(loop_a) .. " && ln -s loop_a.h5 " .. quote(loop_b))
expect_failure("log through a loop of links", {log = loop_a, overwrite = true},
               {"run log '" .. loop_a .. "' is a symbolic link to 'loop_b.h5' that cannot be followed"})
expect_failure("log path ending with a slash", {log = dir .. "/logs/"},
               {"cannot create run log '" .. dir .. "/logs/': the path ends with '/'", "add a file name"})
expect_failure("log below a regular file", {log = corpus .. "/run.h5"},
               {"cannot create run log '" .. corpus .. "/run.h5': '" .. corpus .. "' is not a folder"})
expect_failure("checkpoint below a regular file", {checkpoint = corpus .. "/run.ckpt"},
               {"cannot create checkpoint '" .. corpus .. "/run.ckpt': '" .. corpus .. "' is not a folder"})

H.done()
