"""The Ray seams: each Ray library touches our code in one small module here (data pipelines, the train
function, the serve app, the jobs client, runtime connection). Everything behind them is plain Python."""
