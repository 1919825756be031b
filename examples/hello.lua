-- The seed's weather flow: an AsyncNode whose exec waits on a (fake) API
-- call while the loop stays free. Run: pocketflow examples/hello.lua
local pf = require "pocketflow"

local WeatherFetcherNode = pf.AsyncNode:extend("WeatherFetcherNode")

function WeatherFetcherNode:prep_async(shared)
  local city = shared.city_name or "Unknown city"
  print(("WeatherFetcherNode: Preparing to fetch weather for %s."):format(city))
  return city
end

function WeatherFetcherNode:exec_async(city)
  print(("WeatherFetcherNode: Calling weather API for %s..."):format(city))
  pf.sleep(0.2)  -- the fake API call: other tasks run meanwhile
  local weather_data = "Sunny in " .. city
  print("WeatherFetcherNode: Got weather: " .. weather_data)
  return weather_data
end

function WeatherFetcherNode:post_async(shared, _, exec_res)
  shared.weather_report = exec_res
  print("WeatherFetcherNode: Weather report stored in shared.")
  return "done"
end

local weather_flow = pf.AsyncFlow{ start = WeatherFetcherNode() }

local shared = { city_name = "London" }
print("Starting weather flow...")
weather_flow:run_async(shared)
print("Weather flow finished.")
print(("Final shared data: {city_name = %q, weather_report = %q}")
  :format(shared.city_name, shared.weather_report))
