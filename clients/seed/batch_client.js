class BatchExampleTester {
  constructor(baseUrl = 'http://localhost:8000') {
    this.baseUrl = baseUrl;
  }
  
  async runBatchExample() {
    try {
      const response = await fetch(`${this.baseUrl}/examples/batch`, {
        method: 'POST',
        headers: {
          'Content-Type': 'application/json'
        },
        body: JSON.stringify({})
      });
      
      return await response.json();
    } catch (error) {
      return { error: error.message };
    }
  }
  
  async testBatchConnectivity() {
    const result = await this.runBatchExample();
    return !result.error && result.response?.success;
  }
  
  async benchmarkBatchPerformance(iterations = 10) {
    console.log(`🚀 Benchmarking batch performance (${iterations} iterations)...`);
    
    const results = [];
    const startOverall = performance.now();
    
    for (let i = 0; i < iterations; i++) {
      const start = performance.now();
      const result = await this.runBatchExample();
      const end = performance.now();
      
      const responseTime = end - start;
      const success = !result.error && result.response?.success;
      
      results.push({
        iteration: i + 1,
        success,
        responseTime,
        inferenceTime: result.response?.inference_time_ms || 0,
        batchSize: result.input_count || 0,
        successfulPredictions: result.response?.batch_info?.successful_predictions || 0,
        failedPredictions: result.response?.batch_info?.failed_predictions || 0,
        error: result.error
      });
      
      console.log(`  Iteration ${i + 1}: ${responseTime.toFixed(1)}ms (${success ? '✅' : '❌'})`);
    }
    
    const endOverall = performance.now();
    const totalTime = endOverall - startOverall;
    
    const successful = results.filter(r => r.success);
    const failed = results.filter(r => !r.success);
    
    return {
      iterations,
      successful: successful.length,
      failed: failed.length,
      successRate: (successful.length / iterations) * 100,
      totalTime,
      avgResponseTime: successful.reduce((sum, r) => sum + r.responseTime, 0) / successful.length,
      avgInferenceTime: successful.reduce((sum, r) => sum + r.inferenceTime, 0) / successful.length,
      avgBatchSize: successful.reduce((sum, r) => sum + r.batchSize, 0) / successful.length,
      totalPredictions: successful.reduce((sum, r) => sum + r.successfulPredictions, 0),
      results
    };
  }
  
  async analyzeBatchConsistency(iterations = 10) {
    console.log(`🔍 Analyzing batch consistency (${iterations} iterations)...`);
    
    const results = [];
    const allPredictions = [];
    
    for (let i = 0; i < iterations; i++) {
      const result = await this.runBatchExample();
      
      if (!result.error && result.response?.success) {
        const predictions = result.response.predictions || [];
        const batchInfo = result.response.batch_info || {};
        
        results.push({
          iteration: i + 1,
          predictions,
          inferenceTime: result.response.inference_time_ms,
          successfulPredictions: batchInfo.successful_predictions,
          failedPredictions: batchInfo.failed_predictions,
          batchSize: result.input_count
        });
        
        allPredictions.push(predictions);
        console.log(`  Iteration ${i + 1}: ${predictions.length} predictions, ${result.response.inference_time_ms}ms`);
      } else {
        console.log(`  Iteration ${i + 1}: ERROR - ${result.error}`);
      }
    }
    
    if (results.length === 0) {
      return { error: 'No successful batches to analyze' };
    }
    
    // Check consistency
    const predictionLengths = results.map(r => r.predictions.length);
    const inferenceTimes = results.map(r => r.inferenceTime);
    const successRates = results.map(r => r.successfulPredictions / r.batchSize * 100);
    
    // Check if predictions are deterministic
    const firstPredictions = JSON.stringify(allPredictions[0]);
    const isDeterministic = allPredictions.every(preds => JSON.stringify(preds) === firstPredictions);
    
    return {
      totalRuns: iterations,
      successfulRuns: results.length,
      consistency: {
        predictionLengthConsistent: predictionLengths.every(len => len === predictionLengths[0]),
        avgPredictionLength: predictionLengths.reduce((sum, len) => sum + len, 0) / predictionLengths.length,
        deterministic: isDeterministic,
        avgSuccessRate: successRates.reduce((sum, rate) => sum + rate, 0) / successRates.length,
        avgInferenceTime: inferenceTimes.reduce((sum, time) => sum + time, 0) / inferenceTimes.length,
        inferenceTimeVariation: Math.max(...inferenceTimes) - Math.min(...inferenceTimes)
      },
      results
    };
  }
  
  renderBatchTestInterface(containerId) {
    const container = document.getElementById(containerId);
    
    container.innerHTML = `
      <div class="batch-example-tester">
        <h2>Batch Example Tester</h2>
        
        <div class="test-section">
          <h3>Quick Batch Test</h3>
          <button onclick="batchTester.runQuickBatchTest()" class="btn-primary">
            🚀 Run Batch Example
          </button>
          <div id="quick-batch-result" class="result-display"></div>
        </div>
        
        <div class="test-section">
          <h3>Performance Tests</h3>
          <div class="button-group">
            <button onclick="batchTester.runBatchConnectivityTest()" class="btn-secondary">
              🔗 Connectivity Test
            </button>
            <button onclick="batchTester.runBatchBenchmark()" class="btn-secondary">
              📊 Benchmark (10x)
            </button>
            <button onclick="batchTester.runConsistencyTest()" class="btn-secondary">
              🔍 Consistency Test
            </button>
          </div>
        </div>
        
        <div id="batch-test-results" class="results-section"></div>
      </div>
    `;
  }
  
  async runQuickBatchTest() {
    const resultDiv = document.getElementById('quick-batch-result');
    resultDiv.innerHTML = '<div class="loading">Running batch test...</div>';
    
    const result = await this.runBatchExample();
    
    if (result.error) {
      resultDiv.innerHTML = `<div class="error">❌ Error: ${result.error}</div>`;
    } else if (result.response?.success) {
      const batchInfo = result.response.batch_info || {};
      const predictions = result.response.predictions || [];
      
      resultDiv.innerHTML = `
        <div class="success">
          ✅ Batch Success!
          <br>Input Count: ${result.input_count}
          <br>Inference Time: ${result.response.inference_time_ms}ms
          <br>Successful Predictions: ${batchInfo.successful_predictions || 0}
          <br>Failed Predictions: ${batchInfo.failed_predictions || 0}
          <br>Predictions: <code>${JSON.stringify(predictions.slice(0, 2))}${predictions.length > 2 ? '...' : ''}</code>
        </div>
      `;
    } else {
      resultDiv.innerHTML = '<div class="error">❌ Batch test failed</div>';
    }
  }
  
  async runBatchConnectivityTest() {
    const resultsDiv = document.getElementById('batch-test-results');
    resultsDiv.innerHTML = '<div class="loading">Testing batch connectivity...</div>';
    
    const isConnected = await this.testBatchConnectivity();
    
    resultsDiv.innerHTML = `
      <div class="test-result">
        <h4>Batch Connectivity Test</h4>
        <div class="${isConnected ? 'success' : 'error'}">
          ${isConnected ? '✅ Batch API is responsive and working correctly' : '❌ Batch API is not responding or not working'}
        </div>
      </div>
    `;
  }
  
  async runBatchBenchmark() {
    const resultsDiv = document.getElementById('batch-test-results');
    resultsDiv.innerHTML = '<div class="loading">Running batch benchmark (10 iterations)...</div>';
    
    const benchmark = await this.benchmarkBatchPerformance(10);
    
    resultsDiv.innerHTML = `
      <div class="test-result">
        <h4>Batch Performance Benchmark</h4>
        <div class="benchmark-stats">
          <div class="stat">Success Rate: ${benchmark.successRate.toFixed(1)}%</div>
          <div class="stat">Successful Batches: ${benchmark.successful}/${benchmark.iterations}</div>
          <div class="stat">Avg Response: ${benchmark.avgResponseTime.toFixed(1)}ms</div>
          <div class="stat">Avg Inference: ${benchmark.avgInferenceTime.toFixed(1)}ms</div>
          <div class="stat">Avg Batch Size: ${benchmark.avgBatchSize.toFixed(0)}</div>
          <div class="stat">Total Predictions: ${benchmark.totalPredictions}</div>
        </div>
        <div class="benchmark-chart">
          ${benchmark.results.map(r => `
            <div class="benchmark-bar ${r.success ? 'success' : 'error'}" 
                 style="height: ${(r.responseTime / Math.max(...benchmark.results.map(x => x.responseTime))) * 100}%"
                 title="Iteration ${r.iteration}: ${r.responseTime.toFixed(1)}ms, ${r.successfulPredictions} predictions">
            </div>
          `).join('')}
        </div>
      </div>
    `;
  }
  
  async runConsistencyTest() {
    const resultsDiv = document.getElementById('batch-test-results');
    resultsDiv.innerHTML = '<div class="loading">Running consistency test...</div>';
    
    const consistency = await this.analyzeBatchConsistency(5);
    
    if (consistency.error) {
      resultsDiv.innerHTML = `
        <div class="test-result">
          <h4>Batch Consistency Test</h4>
          <div class="error">❌ Error: ${consistency.error}</div>
        </div>
      `;
      return;
    }
    
    const cons = consistency.consistency;
    
    resultsDiv.innerHTML = `
      <div class="test-result">
        <h4>Batch Consistency Analysis</h4>
        <div class="consistency-stats">
          <div class="stat">Successful Runs: ${consistency.successfulRuns}/${consistency.totalRuns}</div>
          <div class="stat">Length Consistent: ${cons.predictionLengthConsistent ? '✅ Yes' : '❌ No'}</div>
          <div class="stat">Deterministic: ${cons.deterministic ? '✅ Yes' : '❌ No'}</div>
          <div class="stat">Avg Success Rate: ${cons.avgSuccessRate.toFixed(1)}%</div>
          <div class="stat">Avg Inference Time: ${cons.avgInferenceTime.toFixed(1)}ms</div>
          <div class="stat">Time Variation: ${cons.inferenceTimeVariation.toFixed(1)}ms</div>
        </div>
      </div>
    `;
  }
}

// Global instance
const batchTester = new BatchExampleTester();

// Initialize interface
// batchTester.renderBatchTestInterface('batch-example-container');
