-- Checks shared by the Lua tests. Each check prints one line; done() raises
-- when any failed, so the script exits non-zero.
local H = {failures = 0}

function H.check(cond, what)
  if cond then
    print("ok    " .. what)
  else
    H.failures = H.failures + 1
    io.stderr:write("FAIL  " .. what .. "\n")
  end
  return cond
end

-- Runs fn, expects it to raise, and checks that the message contains every
-- fragment (plain text, not patterns). Returns the message.
function H.expect_error(what, fragments, fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then
    H.check(false, what .. ": expected an error, got none")
    return nil
  end
  err = tostring(err)
  for _, f in ipairs(fragments) do
    if not err:find(f, 1, true) then
      H.check(false, string.format("%s: message lacks %q; message was: %s", what, f, err))
      return err
    end
  end
  H.check(true, what .. " (" .. err:gsub("\n.*", "") .. ")")
  return err
end

-- Runs a shell command; returns its combined output and exit status.
function H.run(cmd)
  local f = assert(io.popen(cmd .. " 2>&1", "r"))
  local out = f:read("a")
  local _, _, code = f:close()
  return out, code
end

function H.contains(text, fragment)
  return text:find(fragment, 1, true) ~= nil
end

function H.done()
  if H.failures > 0 then
    error(H.failures .. " check(s) failed", 0)
  end
  print("all checks passed")
end

return H
