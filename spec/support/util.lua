-- Small helpers several spec files share: an expected error's message,
-- a file's bytes written, and a scratch SQLite path with its side files.
local M = {}

-- the message of the error f(...) must raise
function M.errmsg(f, ...)
  local ok, err = pcall(f, ...)
  if ok then error("expected an error", 2) end
  return tostring(err)
end

function M.write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

-- removes an SQLite database and its -wal and -shm files
function M.rm_db(path)
  os.remove(path); os.remove(path .. "-wal"); os.remove(path .. "-shm")
end

-- a fresh path for a database, nothing there yet
function M.tmp_db()
  local path = os.tmpname()
  M.rm_db(path)
  return path
end

return M
